"""dSprites renderer, Moving dSprites (device stream and numpy reference), static sampler."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from mipae_jax import data
from mipae_jax.data import common, dsprites


def data_config(**kw):
  c = ml_collections.ConfigDict(dict(
      name='moving_dsprites', image_size=64, channels=3, input_frames=3, target_frames=3,
      num_objects=2, rotation=False, path='', split_seed=0))
  c.update(kw)
  return c


@functools.cache
def source(**kw):
  return data.make_source(data_config(**kw))


@functools.cache
def sampler(**kw):
  # One jitted function per source, so new seeds reuse its compilation.
  return jax.jit(source(**kw).sample_batch, static_argnums=(1, 2))


@functools.cache
def batch(seed=0, b=16, split='train', **kw):
  v, f = sampler(**kw)(jax.random.key(seed), b, split)
  return np.asarray(v), {k: np.asarray(a) for k, a in f.items()}


def col(src, name, kind='pose'):
  names = src.pose_factor_names if kind == 'pose' else src.content_factor_names
  return names.index(name)


# -- Renderer and the published layout. --

def test_sprites_binary_deterministic_and_fit_the_crop():
  s = dsprites.render_sprites()
  assert s.shape == (3, 6, 40, 16, 16) and s.dtype == np.uint8
  assert set(np.unique(s)) == {0, 1}
  render_fresh = dsprites.render_sprites.__wrapped__()
  np.testing.assert_array_equal(s, render_fresh)
  area = s.sum(axis=(-1, -2))
  assert area.min() > 10
  # Bigger scale, bigger sprite (for every shape and orientation).
  assert np.all(np.diff(area.astype(int), axis=1) >= 0)
  # Orientation 0 is a different image from orientation 5 for the heart (no symmetry).
  assert not np.array_equal(s[2, 5, 0], s[2, 5, 5])


def test_published_layout_round_trips():
  rng = np.random.default_rng(0)
  idx = rng.integers(0, dsprites.NUM_IMAGES, 64)
  lat = dsprites.index_to_latents(idx)
  assert lat.shape == (64, 5)
  np.testing.assert_array_equal(dsprites.latents_to_index(*lat.T), idx)
  assert dsprites.latents_to_index(2, 5, 39, 31, 31) == dsprites.NUM_IMAGES - 1
  assert dsprites.latents_to_index(0, 0, 0, 0, 1) == 1  # posY varies fastest.
  imgs = dsprites.render_images(idx)
  assert imgs.shape == (64, 64, 64) and imgs.dtype == np.uint8
  # render -> index -> same image.
  for i, (sh, sc, o, x, y) in zip(idx[:8], lat[:8], strict=True):
    again = dsprites.render_images(dsprites.latents_to_index(sh, sc, o, x, y))[0]
    np.testing.assert_array_equal(again, dsprites.render_images(i)[0])
    # The sprite sits where its factors say: the crop at POSITION_PIXELS of (y, x).
    top, left = dsprites.POSITION_PIXELS[y], dsprites.POSITION_PIXELS[x]
    np.testing.assert_array_equal(again[top:top + 16, left:left + 16],
                                  dsprites.render_sprites()[sh, sc, o])
    assert again.sum() == dsprites.render_sprites()[sh, sc, o].sum()


def test_position_moves_along_columns_for_x_and_rows_for_y():
  a, bx, by = dsprites.render_images(
      [dsprites.latents_to_index(0, 5, 0, 0, 0), dsprites.latents_to_index(0, 5, 0, 31, 0),
       dsprites.latents_to_index(0, 5, 0, 0, 31)])
  cen = lambda im: np.argwhere(im).mean(0)  # (row, col)
  np.testing.assert_allclose(cen(bx) - cen(a), [0, 48])
  np.testing.assert_allclose(cen(by) - cen(a), [48, 0])
  # Centres span [8, 56] pixels.
  np.testing.assert_allclose(cen(a), [7.5, 7.5])


def test_load_dsprites_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"(?s)dsprites_ndarray.*config.data.path = ''"):
    dsprites.load_dsprites_images(str(tmp_path / 'nope.npz'))
  with pytest.raises(FileNotFoundError, match=str(tmp_path / dsprites.PUBLISHED_FILE)):
    dsprites.load_dsprites_images(str(tmp_path))
  np.savez(tmp_path / 'wrongkey.npz', images=np.zeros((2, 64, 64), np.uint8))
  with pytest.raises(ValueError, match=r'expected key "imgs".*found keys \[\'images\'\]'):
    dsprites.load_dsprites_images(str(tmp_path / 'wrongkey.npz'))
  np.savez(tmp_path / 'small.npz', imgs=np.zeros((2, 64, 64), np.uint8))
  with pytest.raises(ValueError, match=r'uint8 \(737280, 64, 64\).*found uint8 \(2, 64, 64\)'):
    dsprites.load_dsprites_images(str(tmp_path / 'small.npz'))


def test_contact_sheet(tmp_path):
  sheet = dsprites.contact_sheet()
  assert sheet.shape == (3 * 4 * 20 * 4, 6 * 20 * 4) and sheet.max() == 255
  dsprites.save_contact_sheet(str(tmp_path / 'sheet.png'))
  assert (tmp_path / 'sheet.png').stat().st_size > 100


# -- Moving dSprites. --

def test_factor_names_and_shapes():
  src = source()
  assert src.on_device and src.num_frames == 6
  assert src.content_factor_names == ('shape_0', 'scale_0', 'orientation_0', 'shape_1',
                                      'scale_1', 'orientation_1', 'front')
  assert src.pose_factor_names == ('x_0', 'y_0', 'x_1', 'y_1')
  v, f = batch()
  assert v.shape == (16, 6, 64, 64, 3) and v.dtype == np.float32
  assert f['content'].shape == (16, 6, 7) and f['content'].dtype == np.int32
  assert f['pose'].shape == (16, 6, 4) and f['pose'].dtype == np.int32
  assert v.min() == 0 and v.max() == 1
  rot = source(rotation=True, channels=1)
  assert rot.content_factor_names == ('shape_0', 'scale_0', 'shape_1', 'scale_1')
  assert rot.pose_factor_names == ('x_0', 'y_0', 'orientation_0', 'x_1', 'y_1',
                                   'orientation_1')


def test_determinism():
  v1, f1 = batch(seed=3)
  src = source()
  v2, f2 = sampler()(jax.random.key(3), 16, 'train')  # A fresh call: same numbers.
  np.testing.assert_array_equal(v1, np.asarray(v2))
  np.testing.assert_array_equal(f1['pose'], np.asarray(f2['pose']))
  v3, _ = batch(seed=4)
  assert not np.array_equal(v1, v3)
  t1, g1 = src.test_videos(7, 5)
  t2, g2 = src.test_videos(7, 5)
  assert t1.shape == (5, 6, 64, 64, 3)
  np.testing.assert_array_equal(t1, t2)
  np.testing.assert_array_equal(g1['content'], g2['content'])


def test_split_disjoint_and_used():
  src = source()
  train, test = src.combos['train'], src.combos['test']
  assert len(test) == 240 and len(train) == 480
  assert not set(train) & set(test) and len(set(train) | set(test)) == 720
  other = dsprites.MovingDSprites(split_seed=1)
  assert not np.array_equal(other.combos['test'], test)
  np.testing.assert_array_equal(dsprites.MovingDSprites(split_seed=0).combos['test'], test)
  for split, allowed in (('train', train), ('test', test)):
    _, f = batch(seed=1, b=64, split=split)
    c = f['content'][:, 0]
    for k in range(2):
      combo = (c[:, 3 * k] * 6 + c[:, 3 * k + 1]) * 40 + c[:, 3 * k + 2]
      assert set(combo) <= set(allowed)
  rot = source(rotation=True, channels=1)
  assert len(rot.combos['test']) == 6 and not set(rot.combos['train']) & set(rot.combos['test'])


def test_sprites_stay_inside_and_bounce():
  _, f = batch(seed=2, b=64)
  pose = f['pose']  # [B, T, 4]
  assert pose.min() >= 0 and pose.max() <= 31
  d = np.diff(pose, axis=1)
  assert np.abs(d).max() <= 2
  bounced = 0
  for b in range(64):
    for j in range(4):
      p, dp = pose[b, :, j], d[b, :, j]
      speed = np.abs(dp)
      # Speed is constant except a bounce, which can shorten one step.
      for t in range(len(dp) - 1):
        if np.sign(dp[t]) != np.sign(dp[t + 1]) and dp[t] != 0 and dp[t + 1] != 0:
          bounced += 1
          # Direction reverses only at an edge: the turning point is within |v| of it.
          assert min(p[t + 1], 31 - p[t + 1]) < max(speed[t], speed[t + 1])
  assert bounced > 0


def test_reflect_matches_stepping():
  rng = np.random.default_rng(0)
  for _ in range(100):
    n = int(rng.integers(2, 40))
    p0, v0 = int(rng.integers(0, n)), int(rng.integers(-4, 5))
    p, v, traj = p0, v0, []
    for _ in range(30):
      traj.append(p)
      p += v
      while p < 0 or p > n - 1:  # Reverse the velocity and fold the overshoot back.
        p = -p if p < 0 else 2 * (n - 1) - p
        v = -v
    got = common.trajectory(np.array(p0), np.array(v0), 30, n, np)
    np.testing.assert_array_equal(got, traj)


def test_centroid_tracks_position_factors():
  v, f = batch(seed=5)
  src = source()
  sprites = dsprites.render_sprites()
  content, pose = f['content'], f['pose']
  checked = 0
  for b in range(16):
    for k in range(2):
      sh, sc, o = content[b, 0, 3 * k:3 * k + 3]
      crop = sprites[sh, sc, o]
      crop_cen = np.argwhere(crop).mean(0)
      for t in range(src.num_frames):
        ch = v[b, t, :, :, k]
        if ch.sum() != crop.sum():  # Partly hidden behind the front sprite.
          continue
        x, y = pose[b, t, 2 * k], pose[b, t, 2 * k + 1]
        expect = crop_cen + dsprites.POSITION_PIXELS[[y, x]]
        np.testing.assert_allclose(np.argwhere(ch).mean(0), expect, atol=1e-6)
        checked += 1
  assert checked > 100


def test_orientation_moves_only_with_rotation():
  _, f = batch(seed=6)
  c = f['content']
  assert np.all(c == c[:, :1])  # Content is constant in time.
  rot = source(rotation=True, channels=1)
  v, g = batch(seed=6, rotation=True, channels=1)
  o = g['pose'][:, :, [2, 5]]
  assert np.any(np.diff(o, axis=1) != 0)
  w = (o[:, 1] - o[:, 0]) % 40  # Angular velocity, wrapping.
  for t in range(6):
    np.testing.assert_array_equal(o[:, t], (o[:, 0] + w * t) % 40)
  assert set(np.unique(w)) <= {0, 1, 2, 38, 39}
  # Pixels follow the orientation factor: the frame equals a re-render from the factors.
  s = dsprites.render_sprites()
  for b in range(4):
    for t in range(6):
      layers = np.zeros((2, 64, 64), np.float32)
      for k in range(2):
        x, y, ok = g['pose'][b, t, 3 * k:3 * k + 3]
        top, left = dsprites.POSITION_PIXELS[y], dsprites.POSITION_PIXELS[x]
        layers[k, top:top + 16, left:left + 16] = s[g['content'][b, t, 2 * k],
                                                   g['content'][b, t, 2 * k + 1], ok]
      np.testing.assert_array_equal(v[b, t, :, :, 0], np.minimum(layers.sum(0), 1))
  assert rot.pose_factor_names[2] == 'orientation_0'


def test_rgb_occlusion_rule():
  v, f = batch(seed=8, b=64)
  front = f['content'][:, 0, -1]
  assert set(np.unique(front)) == {0, 1}
  overlaps = 0
  for b in range(64):
    fr, back = front[b], 1 - front[b]
    frame = v[b]
    assert np.all(frame[..., 2] == 0)  # Two sprites: the third channel stays empty.
    # Where the front sprite is, the other channel is blank.
    assert np.all(frame[..., back][frame[..., fr] > 0] == 0)
    overlaps += int(np.sum(frame[..., fr] > 0) > 0)
  assert overlaps == 64
  # And hidden pixels really were hidden: some back sprite lost pixels somewhere.
  src = source()
  p = src.draw_params(jax.random.key(8), 64, 'train')
  lost = 0
  s = dsprites.render_sprites()
  for b in range(64):
    k = 1 - int(p['front'][b])
    full = s[int(p['shape'][b, k]), int(p['scale'][b, k]), int(p['orient'][b, k])].sum()
    lost += int((v[b, :, :, :, k].sum(axis=(1, 2)) < full).any())
  assert lost > 0


def test_grayscale_sums_and_clips():
  src = source(channels=1)
  p = src.draw_params(jax.random.key(9), 8, 'train')
  v, _ = src.render(p)
  assert v.shape[-1] == 1
  v_np, _ = src.render_numpy(p)
  np.testing.assert_array_equal(np.asarray(v), v_np)
  assert set(np.unique(v_np)) <= {0.0, 1.0}


def test_device_stream_equals_numpy_reference():
  for kw in ({}, dict(rotation=True, channels=1), dict(image_size=32)):
    src = source(**kw)
    p = src.draw_params(jax.random.key(11), 6, 'test')
    v, f = jax.jit(src.render)(p)
    v_np, f_np = src.render_numpy(p)
    np.testing.assert_allclose(np.asarray(v), v_np, atol=1e-6)
    for k in ('content', 'pose'):
      np.testing.assert_array_equal(np.asarray(f[k]), f_np[k])


def test_numpy_generator_matches_device_statistics():
  src = source()
  _, f = batch(seed=12, b=400)
  _, g = src.sample_batch_numpy(np.random.default_rng(12), 400)
  for k in ('content', 'pose'):
    a, b = f[k].reshape(-1, f[k].shape[-1]), g[k].reshape(-1, g[k].shape[-1])
    # Means agree within 5 standard errors.
    se = np.sqrt(a.var(0) / len(a) * 6 + b.var(0) / len(b) * 6) + 1e-9
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 5 * se), k


def test_small_image_size_is_area_average():
  big = source()
  small = source(image_size=32)
  assert small.image_size == 32
  p = big.draw_params(jax.random.key(13), 4, 'train')
  v64, _ = big.render(p)
  v32, _ = small.render(p)
  assert v32.shape == (4, 6, 32, 32, 3)
  np.testing.assert_allclose(
      np.asarray(v32), np.asarray(v64).reshape(4, 6, 32, 2, 32, 2, 3).mean((3, 5)), atol=1e-6)


def test_sample_static():
  src = source()
  images, content, pose = src.sample_static(0, 300)
  assert images.shape == (300, 64, 64, 3) and images.dtype == np.float32
  assert content.shape == (300, 7) and pose.shape == (300, 4)
  assert content.dtype == np.int32 and pose.dtype == np.int32
  again = src.sample_static(0, 300)
  np.testing.assert_array_equal(again[0], images)
  for k in range(2):
    combo = (content[:, 3 * k] * 6 + content[:, 3 * k + 1]) * 40 + content[:, 3 * k + 2]
    assert set(combo) <= set(src.combos['test'])
  # Frames agree with their factors (the device renderer draws the same thing).
  p = dict(shape=content[:, [0, 3]], scale=content[:, [1, 4]], orient=content[:, [2, 5]],
           omega=np.zeros((300, 2), np.int32), x=pose[:, [0, 2]], y=pose[:, [1, 3]],
           vx=np.zeros((300, 2), np.int32), vy=np.zeros((300, 2), np.int32),
           front=content[:, 6])
  v, _ = src.render(jax.tree.map(np.asarray, p))
  np.testing.assert_array_equal(np.asarray(v)[:, 0], images)
  # Uniform over factors: every grid position and both fronts show up.
  _, c_all, p_all = src.sample_static(1, 5000, 'all')
  assert len(np.unique(p_all[:, 0])) == 32 and set(np.unique(c_all[:, 6])) == {0, 1}
  assert len(np.unique(c_all[:, 2])) == 40
  chunks = list(src.iter_static(3, 250, chunk=100))
  assert [c[0].shape[0] for c in chunks] == [100, 100, 50]


def test_static_rotation_and_grayscale():
  src = source(rotation=True, channels=1, image_size=32)
  images, content, pose = src.sample_static(0, 50)
  assert images.shape == (50, 32, 32, 1) and content.shape == (50, 4) and pose.shape == (50, 6)


def test_make_source_errors():
  cases = [
      (dict(name='dsprites'), r"config.data.name: expected one of .*'moving_dsprites'.*"
                              r"found 'dsprites'"),
      (dict(image_size=48), r'config.data.image_size: expected a divisor of 64.*found 48'),
      (dict(channels=2), r'config.data.channels: expected 3 .* or 1 .*found 2'),
      (dict(input_frames=0), r'config.data.input_frames: expected an int >= 1, found 0'),
      (dict(num_objects=4), r'config.data.num_objects: expected at most 3 .*found 4.*'
                            r'channels = 1'),
      (dict(name='moving_mnist', rotation=True), r'config.data.rotation: expected False'),
      (dict(name='mpi3d', channels=1), r'config.data.channels: expected 3 for mpi3d'),
  ]
  for kw, msg in cases:
    with pytest.raises(ValueError, match=msg):
      data.make_source(data_config(**kw))
  with pytest.raises(FileNotFoundError, match=r"config.data.path: expected .*IDX.*found ''"):
    data.make_source(data_config(name='moving_mnist'))
  with pytest.raises(FileNotFoundError, match=r"config.data.path: '/no/such' does not exist"):
    data.make_source(data_config(name='mpi3d', path='/no/such'))
  with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), found 'val'"):
    source().sample_batch(jax.random.key(0), 2, 'val')


class LazyGrid:
  """Stands in for the published 3 GB array: renders the images it is indexed with."""
  shape = (dsprites.NUM_IMAGES, 64, 64)
  dtype = np.uint8

  def __getitem__(self, i):
    if np.ndim(i) == 0:
      return dsprites.render_images(int(i))[0]
    return dsprites.render_images(np.asarray(i))


def test_sprites_from_published_grid(monkeypatch):
  crops, offsets = dsprites.sprites_from_published(LazyGrid())
  np.testing.assert_array_equal(offsets, dsprites.POSITION_PIXELS)
  np.testing.assert_array_equal(crops, dsprites.render_sprites())
  # make_source with a path uses the user's array through the same crops.
  monkeypatch.setattr(dsprites, 'load_dsprites_images', lambda path: LazyGrid())
  src = data.make_source(data_config(path='/anything.npz', input_frames=1, target_frames=1))
  np.testing.assert_array_equal(src.sprites, dsprites.render_sprites())


def test_sprites_from_published_rejects_non_grid():
  class Marked(LazyGrid):
    def __getitem__(self, i):
      out = super().__getitem__(i).copy()
      out[..., 63, 63] = 1  # A fixed pixel: not a translation of the position-0 crop.
      return out
  with pytest.raises(ValueError, match=r"not a translation grid.*config.data.path = ''"):
    dsprites.sprites_from_published(Marked())


@pytest.mark.parametrize('image_size', [32, 64])
def test_front_ceiling_skips_only_frames_whose_order_cannot_show(image_size):
  """H(front | image) drawn only where two sprites' crop windows meet is the count of
  drawing every frame in every order, to the bit."""
  src = dsprites.MovingDSprites(image_size=image_size)
  rng = np.random.default_rng(3)
  shape, scale, orient, x, y, front = src._draw_static(rng, src.combos['test'], 2000)
  every = np.sum(np.log(src._orders_alike(shape, scale, orient, x, y, front)))
  assert src._count_front_entropy('test', 2000, 3) == float(every) / 2000
  assert 0 < float(every) / 2000 < np.log(2)
