"""Moving MNIST from tiny IDX / npz files, the fixed test set, and MPI3D on tiny arrays."""

import gzip
import os
import zipfile

import jax
import ml_collections
import numpy as np
import pytest

from mipae_jax import data
from mipae_jax.data import common, moving_mnist, mpi3d


def write_idx(path, arr):
  header = bytes([0, 0, 8, arr.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in arr.shape)
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + arr.astype(np.uint8).tobytes())


def fake_mnist(n, seed):
  """Digits whose pixel value encodes the label (label + 1) * 20, so pixels reveal factors."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.uint8)
  x = np.zeros((n, 28, 28), np.uint8)
  x[:, 4:24, 6:22] = ((labels + 1) * 20)[:, None, None]
  return x, labels


@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('mnist')
  for split, (imgs, lbls), seed in (('train', moving_mnist.IDX_FILES['train'], 0),
                                    ('test', moving_mnist.IDX_FILES['test'], 1)):
    x, y = fake_mnist(40 if split == 'train' else 20, seed)
    write_idx(d / (imgs + '.gz'), x)
    write_idx(d / (lbls + '.gz'), y)
  return d


def mnist_config(path, **kw):
  c = ml_collections.ConfigDict(dict(
      name='moving_mnist', image_size=64, channels=3, input_frames=3, target_frames=2,
      num_objects=2, rotation=False, path=str(path), split_seed=0))
  c.update(kw)
  return c


def test_read_idx_and_npz_agree(mnist_dir, tmp_path):
  a = moving_mnist.load_mnist(str(mnist_dir))
  assert a['train'][0].shape == (40, 28, 28) and a['test'][1].shape == (20,)
  np.savez(tmp_path / 'mnist.npz', x_train=a['train'][0], y_train=a['train'][1],
           x_test=a['test'][0], y_test=a['test'][1])
  b = moving_mnist.load_mnist(str(tmp_path / 'mnist.npz'))
  for s in ('train', 'test'):
    np.testing.assert_array_equal(a[s][0], b[s][0])
    np.testing.assert_array_equal(a[s][1], b[s][1])
  # Uncompressed IDX files load too.
  raw = tmp_path / 'raw'
  raw.mkdir()
  for names in moving_mnist.IDX_FILES.values():
    for name in names:
      with gzip.open(mnist_dir / (name + '.gz')) as f, open(raw / name, 'wb') as g:
        g.write(f.read())
  np.testing.assert_array_equal(moving_mnist.load_mnist(str(raw))['test'][0], a['test'][0])


def test_mnist_errors(mnist_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r'MNIST not found at .*nope.*yann.lecun'):
    moving_mnist.load_mnist(str(tmp_path / 'nope'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r'train-images-idx3-ubyte.gz .*not found in'):
    moving_mnist.load_mnist(str(empty))
  np.savez(tmp_path / 'bad.npz', x_train=np.zeros((2, 28, 28), np.uint8))
  with pytest.raises(ValueError, match=r"missing \['x_test', 'y_test', 'y_train'\]"):
    moving_mnist.load_mnist(str(tmp_path / 'bad.npz'))
  np.savez(tmp_path / 'shape.npz', x_train=np.zeros((2, 32, 32), np.uint8),
           y_train=np.zeros(2), x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.zeros(2))
  with pytest.raises(ValueError, match=r'train images should be uint8 \[N, 28, 28\], found '
                                       r'uint8 \[2, 32, 32\]'):
    moving_mnist.load_mnist(str(tmp_path / 'shape.npz'))
  (tmp_path / 'junk.gz').write_bytes(gzip.compress(b'\x01\x02\x03\x04'))
  with pytest.raises(ValueError, match='not an IDX file'):
    moving_mnist.read_idx(str(tmp_path / 'junk.gz'))
  write_idx(tmp_path / 'trunc', np.zeros((3, 4), np.uint8))
  (tmp_path / 'trunc').write_bytes((tmp_path / 'trunc').read_bytes()[:-2])
  with pytest.raises(ValueError, match=r'header says \(3, 4\) = 12 values, found 10'):
    moving_mnist.read_idx(str(tmp_path / 'trunc'))


def test_moving_mnist_videos(mnist_dir):
  src = data.make_source(mnist_config(mnist_dir))
  assert src.on_device
  assert src.content_factor_names == ('digit_0', 'digit_1', 'front')
  assert src.pose_factor_names == ('x_0', 'y_0', 'x_1', 'y_1')
  sample = jax.jit(src.sample_batch, static_argnums=(1, 2))
  v, f = sample(jax.random.key(0), 16, 'train')
  v2, _ = sample(jax.random.key(0), 16, 'train')
  np.testing.assert_array_equal(np.asarray(v), np.asarray(v2))
  v, f = np.asarray(v), jax.tree.map(np.asarray, f)
  assert v.shape == (16, 5, 64, 64, 3) and f['content'].shape == (16, 5, 3)
  pose = f['pose']
  assert pose.min() >= 0 and pose.max() <= 31 and np.abs(np.diff(pose, axis=1)).max() <= 4
  # Pixels agree with factors: each digit's channel shows its label's value in a box whose
  # corner is the digit's top-left + the resized box offset.
  labels = f['content'][:, 0, :2]
  r0, c0 = np.argwhere(src.digits['train'][0] > 0).min(0)  # Every fake digit: same box.
  front = f['content'][:, 0, 2]
  for b in range(16):
    for k in range(2):
      ch = v[b, :, :, :, k]
      vals = np.unique(np.round(ch * 255))
      assert (labels[b, k] + 1) * 20 in vals
      if k == front[b]:
        for t in range(5):
          rows, cols = np.nonzero(ch[t] > 0)
          assert rows.min() == pose[b, t, 2 * k + 1] + r0
          assert cols.min() == pose[b, t, 2 * k] + c0
      else:  # The front digit blanks the back one.
        assert np.all(ch[v[b, ..., front[b]] > 0] == 0)
  # Device stream and the numpy reference agree exactly.
  p = src.draw_params(jax.random.key(1), 4, 'test')
  a, fa = src.render(p, 'test')
  b_, fb = src.render_numpy(p, 'test')
  np.testing.assert_allclose(np.asarray(a), b_, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(fa['pose']), fb['pose'])
  # Test videos use test digits only.
  test_labels = set(src.labels['test'])
  _, ft = src.test_videos(3, 10)
  assert set(ft['content'][..., :2].ravel()) <= test_labels


def test_mnist_grayscale_small_and_static(mnist_dir):
  src = data.make_source(mnist_config(mnist_dir, channels=1, image_size=32))
  v, f = src.sample_batch(jax.random.key(0), 4, 'test')
  assert v.shape == (4, 5, 32, 32, 1) and float(v.max()) <= 1.0
  assert src.content_factor_names == ('digit_0', 'digit_1')
  images, content, pose = src.sample_static(0, 100)
  assert images.shape == (100, 32, 32, 1) and content.shape == (100, 2) and pose.shape == (100, 4)
  np.testing.assert_array_equal(src.sample_static(0, 100)[0], images)
  assert set(content.ravel()) <= set(src.labels['test'])


def test_mnist_test_seq(tmp_path):
  seq = np.random.default_rng(0).integers(0, 256, (20, 3, 64, 64), dtype=np.uint8)
  np.save(tmp_path / 'mnist_test_seq.npy', seq)
  m = moving_mnist.load_test_seq(str(tmp_path))
  assert isinstance(m, np.memmap) and m.shape == (20, 3, 64, 64)
  v = moving_mnist.test_seq_videos(m, 1, 2)
  assert v.shape == (2, 20, 64, 64, 1)
  np.testing.assert_allclose(v[0, 3, :, :, 0], seq[3, 1] / 255)
  np.save(tmp_path / 'bad.npy', np.zeros((20, 3, 32, 32), np.uint8))
  with pytest.raises(ValueError, match=r'expected uint8 \[T, N, 64, 64\].*found uint8 '
                                       r'\[20, 3, 32, 32\]'):
    moving_mnist.load_test_seq(str(tmp_path / 'bad.npy'))
  with pytest.raises(FileNotFoundError, match=r'mnist_test_seq.npy.*unsupervised_video'):
    moving_mnist.load_test_seq(str(tmp_path / 'sub'))


# -- MPI3D. --

TINY = {2 * 2 * 2 * 3 * 3 * 5 * 6: ('tiny', (2, 2, 2, 3, 3, 5, 6)),
        3 * 1 * 2 * 3 * 3 * 5 * 6: ('tiny3', (3, 1, 2, 3, 3, 5, 6))}


def fake_mpi3d(dims):
  """Images whose pixels encode their factor indices: pixel[0, j, 0] = factor j."""
  n = int(np.prod(dims))
  imgs = np.zeros((n, 64, 64, 3), np.uint8)
  imgs[:, 0, :7, 0] = np.stack(np.unravel_index(np.arange(n), dims), -1)
  return imgs


def test_infer_layout_on_real_lengths():
  assert mpi3d.infer_layout(1_036_800) == (6, 6, 2, 3, 3, 40, 40)
  assert mpi3d.infer_layout(460_800) == (4, 4, 2, 3, 3, 40, 40)
  with pytest.raises(ValueError, match=r'has 1,000 images; expected one of the known layouts: '
                                       r'1,036,800 \(mpi3d_real: 6 x 6 .*460,800'):
    mpi3d.infer_layout(1000)


@pytest.mark.parametrize('length', list(TINY))
def test_mpi3d_indexing_each_layout(tmp_path, length):
  dims = TINY[length][1]
  np.save(tmp_path / 'm.npy', fake_mpi3d(dims))
  src = mpi3d.Mpi3dVideos(str(tmp_path / 'm.npy'), num_frames=7, layouts=TINY)
  assert not src.on_device and isinstance(src.images, np.memmap)
  assert src.layout == dims and src.num_combos == int(np.prod(dims[:5]))
  assert not set(src.combos['train']) & set(src.combos['test'])
  assert len(src.combos['test']) == round(src.num_combos / 3)
  v, f = src.sample_batch(jax.random.key(0), 6, 'train')
  assert v.shape == (6, 7, 64, 64, 3) and f['content'].shape == (6, 7, 5)
  assert f['pose'].shape == (6, 7, 2)
  # Pixels carry their factor indices, so indexing is checked exactly.
  got = np.round(v[:, :, 0, :7, 0] * 255).astype(int)
  np.testing.assert_array_equal(got, np.concatenate([f['content'], f['pose']], -1))
  assert np.all(f['content'] == f['content'][:, :1])
  assert f['pose'][..., 0].max() < dims[5] and f['pose'][..., 1].max() < dims[6]
  assert np.abs(np.diff(f['pose'], axis=1)).max() <= 4
  combo = np.ravel_multi_index(tuple(f['content'][:, 0].T), dims[:5])
  assert set(combo) <= set(src.combos['train'])
  v2, _ = src.sample_batch(jax.random.key(0), 6, 'train')
  np.testing.assert_array_equal(v, v2)
  images, content, pose = src.sample_static(0, 50)
  got = np.round(images[:, 0, :7, 0] * 255).astype(int)
  np.testing.assert_array_equal(got, np.concatenate([content, pose], -1))
  t1, _ = src.test_videos(5, 3)
  t2, _ = src.test_videos(5, 3)
  np.testing.assert_array_equal(t1, t2)


def test_mpi3d_npz_stored_and_compressed(tmp_path):
  dims = TINY[2 * 2 * 2 * 3 * 3 * 5 * 6][1]
  imgs = fake_mpi3d(dims)
  np.savez(tmp_path / 'a.npz', images=imgs)
  m = mpi3d.open_images(str(tmp_path / 'a.npz'))
  assert isinstance(m, np.memmap)  # Mapped in place, not read.
  np.testing.assert_array_equal(m[[3, 700]], imgs[[3, 700]])
  np.savez_compressed(tmp_path / 'c.npz', images=imgs)
  m = mpi3d.open_images(str(tmp_path / 'c.npz'))
  assert os.path.exists(tmp_path / 'c.images.npy') and isinstance(m, np.memmap)
  np.testing.assert_array_equal(m[5], imgs[5])
  with zipfile.ZipFile(tmp_path / 'a.npz') as z:
    assert z.namelist() == ['images.npy']


def test_mpi3d_errors(tmp_path):
  np.savez(tmp_path / 'k.npz', imgs=np.zeros((2, 64, 64, 3), np.uint8))
  with pytest.raises(ValueError, match=r"expected key 'images', found keys \['imgs'\]"):
    mpi3d.open_images(str(tmp_path / 'k.npz'))
  np.save(tmp_path / 's.npy', np.zeros((2, 64, 64), np.uint8))
  with pytest.raises(ValueError, match=r'expected uint8 images \[N, 64, 64, 3\], found uint8 '
                                       r'\[2, 64, 64\]'):
    mpi3d.open_images(str(tmp_path / 's.npy'))
  with pytest.raises(FileNotFoundError, match=r'not found at .*x.npz.*mpi3d_real.npz'):
    mpi3d.open_images(str(tmp_path / 'x.npz'))
  np.save(tmp_path / 'n.npy', np.zeros((10, 64, 64, 3), np.uint8))
  with pytest.raises(ValueError, match=r'has 10 images; expected one of the known layouts'):
    data.make_source(ml_collections.ConfigDict(dict(
        name='mpi3d', image_size=64, channels=3, input_frames=2, target_frames=2,
        num_objects=2, rotation=False, path=str(tmp_path / 'n.npy'), split_seed=0)))


def test_split_combos_is_stable():
  a = common.split_combos(72, 0)
  b = common.split_combos(72, 0)
  np.testing.assert_array_equal(a[1], b[1])
  assert len(a[1]) == 24 and len(a[0]) == 48


def test_mnist_sample_with_explicit_data(mnist_dir):
  src = data.make_source(mnist_config(mnist_dir, channels=1))
  f = jax.jit(src.sample_with, static_argnums=(2, 3))
  v, fa = f(src.device_data, jax.random.key(4), 3, 'test')
  w, fb = src.jit_sample_batch(jax.random.key(4), 3, 'test')
  np.testing.assert_array_equal(np.asarray(v), np.asarray(w))
  np.testing.assert_array_equal(np.asarray(fa['content']), np.asarray(fb['content']))


def test_standard_moving_mnist_test_set_scores_prediction(tmp_path):
  """config.eval.test_seq: prediction is scored on the first eval.test_videos sequences of
  mnist_test_seq.npy ([20, N, 64, 64] uint8, frames first), context then future frames,
  and the report says which; other datasets refuse the option."""
  from mipae_jax import configuration, errors, evaluate
  from mipae_jax.configs import mnist as mnist_config
  x, y = fake_mnist(200, 0)
  np.savez(tmp_path / 'mnist.npz', x_train=x, y_train=y, x_test=x[:50], y_test=y[:50])
  seq = np.random.default_rng(0).integers(0, 256, (20, 30, 64, 64)).astype(np.uint8)
  np.save(tmp_path / 'mnist_test_seq.npy', seq)
  c = mnist_config.get_config()
  c.data.path = str(tmp_path / 'mnist.npz')
  c.data.channels, c.data.image_size = 1, 32
  c.data.input_frames, c.data.target_frames = 5, 10
  c.eval.future_frames, c.eval.test_videos = 10, 12
  c.eval.test_seq = str(tmp_path / 'mnist_test_seq.npy')
  configuration.validate(c)
  videos, what = evaluate.prediction_videos(c, None)
  assert videos.shape == (12, 15, 32, 32, 1)
  want = seq[:15, 3].astype(np.float32).reshape(15, 32, 2, 32, 2).mean(axis=(2, 4)) / 255
  np.testing.assert_allclose(videos[3, ..., 0], want, rtol=1e-6)
  assert what == ('the standard Moving MNIST test set (mnist_test_seq.npy): sequences 0-11 '
                  'of 30, frames 0-4 as context, the next 10 scored')
  c.eval.future_frames = 16
  c.data.target_frames = 16
  with pytest.raises(errors.ConfigError, match='at most 15: the test set has 20 frames'):
    configuration.validate(c)
  c.data.channels = 3
  with pytest.raises(errors.ConfigError, match="config.eval.test_seq=.* unless data.name="):
    configuration.validate(c)
