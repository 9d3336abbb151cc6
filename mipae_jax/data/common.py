"""Pieces shared by every dataset: the source interface, motion, placement, splits.

Conventions used throughout `mipae_jax.data`:
- frames are float32 in [0, 1], shaped `[B, T, H, W, C]`;
- factors are int32, per frame: `{'content': [B, T, Kc], 'pose': [B, T, Kp]}`, columns in the
  order of the source's `content_factor_names` / `pose_factor_names`;
- `x` is the horizontal (column, W) axis and `y` the vertical (row, H) axis.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mipae_jax import errors
from mipae_jax.factors import FactorGroup  # The datasets name it common.FactorGroup.

SPLITS = ('train', 'test')
CANVAS = 64  # Every dataset renders at 64 x 64; smaller image sizes are area-averaged.


def _unreadable_reason(e: BaseException) -> str:
  """What a NumPy / zip / gzip failure means for the user's file, in words (never
  numpy's advice to load pickles: a data file holding pickles is not one of ours)."""
  text = str(e)
  if 'allow_pickle' in text or 'pickled' in text:
    return 'it is not a NumPy .npy/.npz array file'
  if 'mmap length is greater than file size' in text or isinstance(e, EOFError):
    return 'it is shorter than its header says: truncated (an interrupted download or copy?)'
  if isinstance(e, zipfile.BadZipFile):
    return 'it is not a zip archive, as a .npz must be'
  if isinstance(e, gzip.BadGzipFile):
    return 'it is not a gzip file, as a .gz must be'
  return f'{type(e).__name__}: {errors.first_line(text)}'


@contextlib.contextmanager
def reading(path: str, what: str, fix: str):
  """Turns the errors NumPy, zipfile and gzip raise on a damaged file into one DataError
  naming the file, what it should hold and how to get a good one."""
  try:
    yield
  except errors.UserError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise errors.DataError(f'{path}: cannot be read as {what}: {_unreadable_reason(e)}. '
                           f'{fix}') from e


class VideoSource:
  """Base class of the dataset sources returned by `mipae_jax.data.make_source`.

  Attributes:
    num_frames: T, frames per video.
    image_size: H = W of the returned frames.
    channels: C of the returned frames.
    content_factor_names: names of the content factor columns.
    pose_factor_names: names of the pose factor columns.
    on_device: True when `sample_batch` is a pure jittable function of `key` (with
      `batch_size` and `split` static); False when it is a host numpy function.
  """

  num_frames: int
  image_size: int
  channels: int
  content_factor_names: tuple[str, ...]
  pose_factor_names: tuple[str, ...]
  on_device: bool

  def sample_batch(self, key: jax.Array, batch_size: int, split: str = 'train'):
    """Returns `(videos [B, T, H, W, C] float32, {'content': [B, T, Kc], 'pose': [B, T, Kp]})`."""
    raise NotImplementedError

  def sample_static(self, key_or_seed, n: int, split: str = 'test'):
    """Returns `(images [N, H, W, C] float32, content [N, Kc] int32, pose [N, Kp] int32)`."""
    raise NotImplementedError

  def factor_groups(self, split: str = 'test') -> dict | None:
    """`{'content': (FactorGroup, ...), 'pose': (...)}` for `sample_static(split)`'s frames.

    None (the default) lets the MIG group the factors itself (`metrics.probe.
    default_groups`: joint label if small, else independent columns; entropies estimated
    from the labels); datasets whose population is known say so exactly.
    """
    del split
    return None

  def test_videos(self, seed: int, n: int):
    """A fixed test set: the same `seed` gives the same videos in every run.

    Returns numpy `(videos [n, T, H, W, C] float32, {'content': [n, T, Kc], 'pose': ...})`.
    """
    if not self.on_device:
      return self.sample_batch(_as_key(seed), n, 'test')
    sample = self.jit_sample_batch
    # Chunks of a fixed size keyed by their index keep the set independent of memory limits.
    chunk = 100
    videos, content, pose = [], [], []
    root = jax.random.key(seed)
    for i in range(0, n, chunk):
      v, f = sample(jax.random.fold_in(root, i // chunk), chunk, 'test')
      m = min(chunk, n - i)
      videos.append(np.asarray(v[:m]))
      content.append(np.asarray(f['content'][:m]))
      pose.append(np.asarray(f['pose'][:m]))
    return (np.concatenate(videos), {'content': np.concatenate(content),
                                     'pose': np.concatenate(pose)})

  @functools.cached_property
  def jit_sample_batch(self):
    """`jax.jit(self.sample_batch, static_argnums=(1, 2))`, compiled once per source."""
    return jax.jit(self.sample_batch, static_argnums=(1, 2))

  def iter_static(self, seed: int, n: int, chunk: int = 10_000, split: str = 'test'):
    """Yields `sample_static` chunks (seeded by `seed` and the chunk index) totalling n.

    100,000 RGB 64x64 float32 frames are 4.9 GB; this keeps the MIG's memory flat.
    """
    for i in range(0, n, chunk):
      yield self.sample_static([seed, i // chunk], min(chunk, n - i), split)

  def _check_split(self, split: str, allow_all: bool = False):
    allowed = SPLITS + (('all',) if allow_all else ())
    if split not in allowed:
      raise ValueError(f'split must be one of {allowed}, found {split!r}.')


def _as_key(key_or_seed) -> jax.Array:
  if isinstance(key_or_seed, jax.Array) and jnp.issubdtype(key_or_seed.dtype,
                                                           jax.dtypes.prng_key):
    return key_or_seed
  return jax.random.key(np.random.default_rng(key_or_seed).integers(2**31))


def host_rng(key_or_seed) -> np.random.Generator:
  """A numpy Generator from an int seed, a sequence of ints, or a JAX key."""
  if isinstance(key_or_seed, jax.Array):
    if jnp.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
      key_or_seed = jax.random.key_data(key_or_seed)
    key_or_seed = np.asarray(key_or_seed).astype(np.uint32).ravel().tolist()
  return np.random.default_rng(key_or_seed)


def reflect(p, n: int, xp: Any = jnp):
  """Folds unbounded integer positions into [0, n-1] like a bouncing ball.

  The triangle wave of period 2(n-1) is what stepping `p += v` with the velocity reversed
  at each edge produces, so a whole trajectory is `reflect(p0 + v * t)`, with no scan.
  """
  if n == 1:
    return xp.zeros_like(p)
  period = 2 * (n - 1)
  q = xp.mod(p, period)
  return xp.where(q < n, q, period - q)


def trajectory(p0, v, num_frames: int, n: int, xp: Any = jnp):
  """Positions `[..., T]` of a bouncing point starting at `p0 [...]` with velocity `v [...]`."""
  t = xp.arange(num_frames)
  return reflect(p0[..., None] + v[..., None] * t, n, xp)


def place(crops, top, left, size: int = CANVAS):
  """Pastes `crops [N, h, w]` into zero canvases `[N, size, size]` at `(top, left) [N]`.

  Gathers from the crop rather than scattering into the canvas: two `take_along_axis` over
  rows then columns, exact for any pixel values, and cheap under jit and vmap.
  """
  h, w = crops.shape[-2:]
  rows = jnp.arange(size)[None, :] - top[:, None]  # [N, size], row of the crop, or outside.
  cols = jnp.arange(size)[None, :] - left[:, None]
  in_r = (rows >= 0) & (rows < h)
  in_c = (cols >= 0) & (cols < w)
  g = jnp.take_along_axis(crops, jnp.clip(rows, 0, h - 1)[:, :, None], axis=1)  # [N, size, w]
  g = jnp.take_along_axis(g, jnp.clip(cols, 0, w - 1)[:, None, :], axis=2)  # [N, size, size]
  return g * (in_r[:, :, None] & in_c[:, None, :]).astype(g.dtype)


def place_np(crops, top, left, size: int = CANVAS, dtype=np.float32):
  """Numpy `place`: crops `[N, h, w]`, offsets `[N]` -> canvases `[N, size, size]`."""
  n, h, w = crops.shape
  out = np.zeros((n, size, size), dtype)
  top = np.asarray(top)
  left = np.asarray(left)
  if np.all((top >= 0) & (left >= 0) & (top + h <= size) & (left + w <= size)):
    r = top[:, None, None] + np.arange(h)[None, :, None]
    c = left[:, None, None] + np.arange(w)[None, None, :]
    out[np.arange(n)[:, None, None], r, c] = crops
    return out
  for i in range(n):  # Crops that stick out of the canvas are clipped one by one.
    r0, c0 = max(top[i], 0), max(left[i], 0)
    r1, c1 = min(top[i] + h, size), min(left[i] + w, size)
    if r1 > r0 and c1 > c0:
      out[i, r0:r1, c0:c1] = crops[i, r0 - top[i]:r1 - top[i], c0 - left[i]:c1 - left[i]]
  return out


def compose(masks, front, channels: int, xp: Any = jnp):
  """Combines per-object layers into frames.

  Args:
    masks: `[..., K, H, W]` float layers in [0, 1], one per object.
    front: `[...]` int, the object drawn in front (RGB mode only).
    channels: 3 puts object k in channel k, and the front object's pixels blank the others'
      at those pixels; 1 sums the layers and clips at 1.
    xp: jnp or np.

  Returns:
    `[..., H, W, C]` frames.
  """
  k = masks.shape[-3]
  if channels == 1:
    return xp.minimum(masks.sum(axis=-3), 1.0)[..., None]
  is_front = xp.arange(k) == front[..., None]  # [..., K]
  front_mask = xp.take_along_axis(masks, front[..., None, None, None], axis=-3)  # [..., 1, H, W]
  layers = xp.where(is_front[..., None, None], masks, masks * (1.0 - (front_mask > 0)))
  layers = xp.moveaxis(layers, -3, -1)  # [..., H, W, K]
  if k < channels:
    pad = [(0, 0)] * (layers.ndim - 1) + [(0, channels - k)]
    layers = xp.pad(layers, pad)
  return layers


def area_downsample(frames, size: int, xp: Any = jnp):
  """Averages `[..., H, W, C]` frames down to `[..., size, size, C]` (H must divide by size)."""
  h, w, c = frames.shape[-3:]
  if size == h:
    return frames
  f = h // size
  x = frames.reshape(frames.shape[:-3] + (size, f, size, w // size, c))
  return x.mean(axis=(-4, -2))


def conditional_entropy(values, renders) -> float:
  """H(value | render) in nats over equally likely cells: values, renders [M] ints.

  Cell i has value `values[i]` and renders to image class `renders[i]`; given a render,
  the value's posterior is proportional to how many of the render's cells hold it.
  """
  _, r = np.unique(np.asarray(renders), return_inverse=True)
  _, v = np.unique(np.asarray(values), return_inverse=True)
  table = np.zeros((r.max() + 1, v.max() + 1))
  np.add.at(table, (r.reshape(-1), v.reshape(-1)), 1)
  n_r = table.sum(1, keepdims=True)
  p = table / n_r
  with np.errstate(divide='ignore', invalid='ignore'):
    h_r = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
  return float(np.sum(n_r[:, 0] * h_r) / table.sum())


def uniform_groups(names: tuple[str, ...], ordinal_levels: dict[str, int]):
  """One independent, uniformly distributed group per ordinal factor (grid positions)."""
  return tuple(FactorGroup(n, (i,), ordinal=True, levels=ordinal_levels[n],
                           entropy=float(np.log(ordinal_levels[n])))
               for i, n in enumerate(names) if n in ordinal_levels)


def split_combos(num_combos: int, seed: int, test_fraction: float = 1 / 3):
  """Seeded disjoint split of content combinations: `(train_ids, test_ids)`, each sorted.

  One third is held out for test (docs/method.md section 4). Uses numpy's PCG64 so the split is
  the same on every machine and JAX version.
  """
  perm = np.random.default_rng(np.random.SeedSequence([seed, num_combos])).permutation(
      num_combos)
  n_test = int(round(num_combos * test_fraction))
  return np.sort(perm[n_test:]).astype(np.int32), np.sort(perm[:n_test]).astype(np.int32)
