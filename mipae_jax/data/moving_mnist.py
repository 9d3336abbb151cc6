"""Moving MNIST (DRNET style) from the user's MNIST files, and the fixed 10,000-video test set.

Each video holds `num_objects` MNIST digits resized to 32x32 on a 64x64 canvas. A digit's
top-left corner starts uniform in [0, 32)^2 and moves with an integer velocity uniform in
[-4, 3] per axis, reflecting at 0 and 31 (DRNET clamps to the edge and then reverses; we
reflect, which keeps every step the same length and makes the trajectory a closed form).
RGB mode puts digit k in channel k with one random digit in front (its non-zero pixels
blank the others there); grayscale sums and clips at 1. Train videos use MNIST train digits,
test videos MNIST test digits.

Factors per frame. Content: `digit_k` labels (+ `front` in RGB mode). Pose: `x_k, y_k`,
the top-left corner in pixels, in [0, 32).
"""

from __future__ import annotations

import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np

from mipae_jax import errors
from mipae_jax.data import common

DIGIT = 32  # Digits are resized to 32 x 32.
NUM_POSITIONS = 32  # Top-left corners in [0, 32).
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
HOW_TO_GET = ('Get MNIST from https://yann.lecun.com/exdb/mnist/ (the four IDX .gz files) or '
              'https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz.')
TEST_SEQ_SHAPE = (20, 10000, 64, 64)


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally .gz): uint8 images `[N, 28, 28]` or labels `[N]`."""
  opener = gzip.open if path.endswith('.gz') else open
  with common.reading(path, 'an MNIST IDX file', HOW_TO_GET), opener(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise errors.DataError(f'{path}: not an IDX file of uint8 (expected magic 0x0000 08 nd, found '
                     f'{raw[:4].hex()}).')
  nd = raw[3]
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(nd))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * nd)
  if data.size != int(np.prod(dims)):
    raise errors.DataError(f'{path}: header says {dims} = {int(np.prod(dims))} values, found '
                     f'{data.size} (truncated download?).')
  return data.reshape(dims)


def _check_pair(where: str, x: np.ndarray, y: np.ndarray, split: str):
  if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
    raise errors.DataError(f'{where}: {split} images should be uint8 [N, 28, 28], found '
                     f'{x.dtype} {list(x.shape)}.')
  if y.shape != (x.shape[0],):
    raise errors.DataError(f'{where}: {split} labels should be [{x.shape[0]}] (one per image), '
                     f'found {list(y.shape)}.')
  if y.size and (y.min() < 0 or y.max() > 9):
    raise errors.DataError(f'{where}: {split} labels should be digits 0-9, found values from '
                     f'{int(y.min())} to {int(y.max())}: are the label files those of MNIST?')


def load_mnist(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Loads MNIST from a directory of IDX files (.gz or not), a `mnist.npz`, or a TFDS dir.

  Returns:
    `{'train': (images uint8 [N, 28, 28], labels int32 [N]), 'test': (...)}`.
  """
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    if not path.endswith('.npz'):
      raise errors.DataError(f'{path}: expected a mnist.npz (keys x_train, y_train, x_test, '
                       f'y_test) or a directory of IDX files, found another file. {HOW_TO_GET}')
    with (common.reading(path, 'a mnist.npz (keys x_train, y_train, x_test, y_test)',
                         HOW_TO_GET), np.load(path) as f):
      missing = {'x_train', 'y_train', 'x_test', 'y_test'} - set(f.files)
      if missing:
        raise errors.DataError(f'{path}: expected keys x_train, y_train, x_test, y_test, found '
                         f'{sorted(f.files)} (missing {sorted(missing)}).')
      out = {s: (f[f'x_{s}'], f[f'y_{s}'].astype(np.int32)) for s in common.SPLITS}
  elif os.path.isdir(path):
    if os.path.isdir(os.path.join(path, 'mnist')):
      return _load_tfds_mnist(path)
    out = {}
    for split, names in IDX_FILES.items():
      arrays = []
      for name in names:
        found = [os.path.join(path, name + ext) for ext in ('.gz', '')
                 if os.path.exists(os.path.join(path, name + ext))]
        if not found:
          raise errors.DataNotFoundError(
              f'{name}.gz (or {name}) not found in {path!r}; it needs all four IDX files '
              f'{[n + ".gz" for ns in IDX_FILES.values() for n in ns]}. {HOW_TO_GET}')
        arrays.append(read_idx(found[0]))
      out[split] = (arrays[0], arrays[1].astype(np.int32))
  else:
    raise errors.DataNotFoundError(f'MNIST not found at {path!r}. {HOW_TO_GET}')
  for split, (x, y) in out.items():
    _check_pair(path, x, y, split)
  return out


def _load_tfds_mnist(data_dir: str):
  """TFDS's prepared `mnist` under `data_dir`; readable without TF when stored as array_record."""
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder('mnist', data_dir=data_dir)
    out = {}
    for split in common.SPLITS:
      ds = builder.as_data_source(split=split)
      items = [ds[i] for i in range(len(ds))]
      out[split] = (np.stack([it['image'][..., 0] for it in items]).astype(np.uint8),
                    np.array([it['label'] for it in items], np.int32))
    return out
  except Exception as e:  # noqa: BLE001 - re-raised with what to do.
    raise errors.DataError(
        f'{data_dir}/mnist: could not read the prepared TFDS mnist without TensorFlow ({e}). '
        'TFDS can read it here only if it was prepared with file_format=array_record; '
        f'otherwise point config.data.path at the IDX files or mnist.npz. {HOW_TO_GET}') from e


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """`[n_out, n_in]` linear interpolation weights with half-pixel centres."""
  pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
  lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
  hi = np.clip(lo + 1, 0, n_in - 1)
  w = np.clip(pos - lo, 0, 1)
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), lo), 1 - w)
  np.add.at(m, (np.arange(n_out), hi), w)
  return m


def resize_digits(images: np.ndarray, size: int = DIGIT) -> np.ndarray:
  """Bilinear resize `[N, 28, 28]` uint8 -> `[N, size, size]` uint8, as two matmuls."""
  m = _bilinear_matrix(images.shape[-1], size).astype(np.float32)
  out = np.empty((images.shape[0], size, size), np.uint8)
  for i in range(0, len(images), 10_000):
    x = images[i:i + 10_000].astype(np.float32)
    out[i:i + 10_000] = np.clip(np.rint(m @ x @ m.T), 0, 255).astype(np.uint8)
  return out


class MovingMnist(common.VideoSource):
  """Moving MNIST videos; `sample_batch` runs on device once the digits are there."""

  def __init__(self, mnist: dict, num_frames: int = 15, image_size: int = 64,
               channels: int = 1, num_objects: int = 2):
    self.num_frames = num_frames
    self.image_size = image_size
    self.channels = channels
    self.num_objects = num_objects
    self.on_device = True
    self.digits = {s: resize_digits(mnist[s][0]) for s in common.SPLITS}  # uint8 [N, 32, 32]
    self.labels = {s: np.asarray(mnist[s][1], np.int32) for s in common.SPLITS}
    # uint8 on device: a quarter of float32's memory, converted per batch.
    self._digits_dev = {s: jnp.asarray(v) for s, v in self.digits.items()}
    self._labels_dev = {s: jnp.asarray(v) for s, v in self.labels.items()}
    self.content_factor_names = tuple(f'digit_{k}' for k in range(num_objects)) + (
        ('front',) if channels == 3 else ())
    self.pose_factor_names = tuple(n for k in range(num_objects) for n in (f'x_{k}', f'y_{k}'))

  def draw_params(self, key: jax.Array, batch_size: int, split: str = 'train'):
    """Initial state per video: digit index, corner, velocity `[B, K]`; `front [B]`."""
    self._check_split(split)
    k_d, k_p, k_v, k_f = jax.random.split(key, 4)
    b, n = batch_size, self.num_objects
    idx = jax.random.randint(k_d, (b, n), 0, self.digits[split].shape[0])
    pos = jax.random.randint(k_p, (b, n, 2), 0, NUM_POSITIONS)
    vel = jax.random.randint(k_v, (b, n, 2), -4, 4)
    front = jax.random.randint(k_f, (b,), 0, n)
    return dict(digit=idx, x=pos[..., 0], y=pos[..., 1], vx=vel[..., 0], vy=vel[..., 1],
                front=front)

  def _factors(self, labels, front, x, y, xp):
    t = x.shape[-1]
    b = labels.shape[0]
    content = [xp.broadcast_to(labels[:, k, None], (b, t)) for k in range(self.num_objects)]
    if self.channels == 3:
      content.append(xp.broadcast_to(front[:, None], (b, t)))
    pose = [a for k in range(self.num_objects) for a in (x[:, k], y[:, k])]
    return {'content': xp.stack(content, -1).astype(xp.int32),
            'pose': xp.stack(pose, -1).astype(xp.int32)}

  @property
  def device_data(self):
    """The digit tables on device: `{split: (digits uint8 [N, 32, 32], labels int32 [N])}`.

    `jax.jit(source.sample_batch)` embeds these (61 MB for MNIST train) as constants of the
    program; to pass them as arguments instead, jit `sample_with` and give it this.
    """
    return {s: (self._digits_dev[s], self._labels_dev[s]) for s in common.SPLITS}

  def render(self, p, split: str = 'train', data=None):
    """Videos `[B, T, H, W, C]` and factors from `draw_params` output (jittable)."""
    digits, labels = (data or self.device_data)[split]
    t = self.num_frames
    x = common.trajectory(p['x'], p['vx'], t, NUM_POSITIONS, jnp)  # [B, K, T]
    y = common.trajectory(p['y'], p['vy'], t, NUM_POSITIONS, jnp)
    b, k, _ = x.shape
    crops = digits[p['digit']].astype(jnp.float32) / 255.0  # [B, K, 32, 32]
    crops = jnp.broadcast_to(crops[:, :, None], (b, k, t, DIGIT, DIGIT)).reshape(-1, DIGIT,
                                                                                 DIGIT)
    masks = common.place(crops, y.reshape(-1), x.reshape(-1))
    masks = masks.reshape(b, k, t, common.CANVAS, common.CANVAS).transpose(0, 2, 1, 3, 4)
    front = jnp.broadcast_to(p['front'][:, None], (b, t))
    videos = common.area_downsample(common.compose(masks, front, self.channels, jnp),
                                    self.image_size, jnp)
    return videos, self._factors(labels[p['digit']], p['front'], x, y, jnp)

  def sample_batch(self, key: jax.Array, batch_size: int, split: str = 'train'):
    """Videos float32 `[B, T, H, W, C]`, factors `{'content': [B, T, Kc], 'pose': ...}`.

    Pure in `key`; jit with `jax.jit(source.sample_batch, static_argnums=(1, 2))`.
    """
    return self.render(self.draw_params(key, batch_size, split), split)

  def sample_with(self, data, key: jax.Array, batch_size: int, split: str = 'train'):
    """`sample_batch` with the digit tables as an argument (`data = self.device_data`):
    `jax.jit(source.sample_with, static_argnums=(2, 3))(source.device_data, key, B, split)`.
    """
    return self.render(self.draw_params(key, batch_size, split), split, data)

  def render_numpy(self, p, split: str = 'train'):
    """Per-video numpy loop, like the published loader: the reference and the slow path."""
    p = {k: np.asarray(v) for k, v in p.items()}
    t, s = self.num_frames, self.image_size
    x = common.trajectory(p['x'], p['vx'], t, NUM_POSITIONS, np)
    y = common.trajectory(p['y'], p['vy'], t, NUM_POSITIONS, np)
    b = x.shape[0]
    videos = np.zeros((b, t, s, s, self.channels), np.float32)
    for i in range(b):
      digits = [self.digits[split][p['digit'][i, k]].astype(np.float32) / 255.0
                for k in range(self.num_objects)]
      for f in range(t):
        layers = np.zeros((self.num_objects, common.CANVAS, common.CANVAS), np.float32)
        for k, d in enumerate(digits):
          layers[k, y[i, k, f]:y[i, k, f] + DIGIT, x[i, k, f]:x[i, k, f] + DIGIT] = d
        frame = common.compose(layers, p['front'][i], self.channels, np)
        videos[i, f] = common.area_downsample(frame, s, np)
    return videos, self._factors(self.labels[split][p['digit']], p['front'], x, y, np)

  def sample_batch_numpy(self, rng: np.random.Generator, batch_size: int,
                         split: str = 'train'):
    """Numpy generator of the same distribution, drawing with a numpy Generator."""
    self._check_split(split)
    b, n = batch_size, self.num_objects
    p = dict(digit=rng.integers(0, len(self.digits[split]), (b, n)),
             x=rng.integers(0, NUM_POSITIONS, (b, n)), y=rng.integers(0, NUM_POSITIONS, (b, n)),
             vx=rng.integers(-4, 4, (b, n)), vy=rng.integers(-4, 4, (b, n)),
             front=rng.integers(0, n, (b,)))
    return self.render_numpy(p, split)

  def factor_groups(self, split: str = 'test') -> dict:
    """Independent factor groups of `sample_static(split)` with exact entropies.

    Content: each digit's class (distributed as the split's labels) and the front digit
    (RGB, several digits; uniform). Pose: x and y of each digit, uniform over 32. No
    ceilings are computed: the front order of digits that do not overlap is invisible,
    so with several RGB digits the content term of a perfect model stays below 1.
    """
    self._check_split(split)
    p = np.bincount(self.labels[split], minlength=10) / len(self.labels[split])
    h_digit = float(-np.sum(p[p > 0] * np.log(p[p > 0])))
    k = self.num_objects
    content = [common.FactorGroup(f'digit_{j}', (j,), entropy=h_digit) for j in range(k)]
    if self.channels == 3 and k > 1:
      content.append(common.FactorGroup('front', (k,), entropy=float(np.log(k))))
    return {'content': tuple(content),
            'pose': common.uniform_groups(self.pose_factor_names,
                                          dict.fromkeys(self.pose_factor_names,
                                                        NUM_POSITIONS))}

  def sample_static(self, key_or_seed, n: int, split: str = 'test'):
    """Single frames: digits uniform over the split, corners uniform, front uniform.

    Returns:
      `(images float32 [N, H, W, C], content int32 [N, Kc], pose int32 [N, Kp])`.
    """
    self._check_split(split)
    rng = common.host_rng(key_or_seed)
    k, s = self.num_objects, self.image_size
    images = np.empty((n, s, s, self.channels), np.float32)
    content = np.empty((n, len(self.content_factor_names)), np.int32)
    pose = np.empty((n, len(self.pose_factor_names)), np.int32)
    for i in range(0, n, 2000):
      m = min(2000, n - i)
      idx = rng.integers(0, len(self.digits[split]), (m, k))
      x = rng.integers(0, NUM_POSITIONS, (m, k))
      y = rng.integers(0, NUM_POSITIONS, (m, k))
      front = rng.integers(0, k, (m,))
      crops = self.digits[split][idx.ravel()].astype(np.float32) / 255.0
      layers = common.place_np(crops, y.ravel(), x.ravel()).reshape(m, k, common.CANVAS,
                                                                     common.CANVAS)
      frames = common.compose(layers, front, self.channels, np)
      images[i:i + m] = common.area_downsample(frames, s, np)
      f = self._factors(self.labels[split][idx], front, x[..., None], y[..., None], np)
      content[i:i + m], pose[i:i + m] = f['content'][:, 0], f['pose'][:, 0]
    return images, content, pose


def load_test_seq(path: str) -> np.ndarray:
  """The fixed Moving MNIST test set `mnist_test_seq.npy`, memory-mapped.

  Returns:
    uint8 `[20, 10000, 64, 64]` (frames first, as published); see `test_seq_videos`.
  """
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    path = os.path.join(path, 'mnist_test_seq.npy')
  if not os.path.exists(path):
    raise errors.DataNotFoundError(
        f'{path!r} not found. Download mnist_test_seq.npy from '
        'https://www.cs.toronto.edu/~nitish/unsupervised_video/ and point to it.')
  with common.reading(path, f'the Moving MNIST test set (uint8 {TEST_SEQ_SHAPE})',
                      'Download mnist_test_seq.npy again.'):
    seq = np.load(path, mmap_mode='r')
  if seq.ndim != 4 or seq.shape[2:] != (64, 64) or seq.dtype != np.uint8:
    raise errors.DataError(f'{path}: expected uint8 [T, N, 64, 64] (published: {TEST_SEQ_SHAPE}), '
                     f'found {seq.dtype} {list(seq.shape)}.')
  return seq


def test_seq_videos(seq: np.ndarray, start: int = 0, n: int | None = None,
                    image_size: int = 64) -> np.ndarray:
  """Videos `[n, T, H, W, 1]` float32 in [0, 1] from the `load_test_seq` array."""
  stop = seq.shape[1] if n is None else start + n
  v = np.asarray(seq[:, start:stop]).transpose(1, 0, 2, 3)[..., None].astype(np.float32) / 255
  return common.area_downsample(v, image_size, np)
