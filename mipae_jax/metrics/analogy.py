"""Analogy accuracy: does a drawn analogy keep each object's shape, and is it where the pose
source says? The number behind "the shapes survive" or "they turn to blobs".

An analogy draws the content of video i with the pose of video j, `D(E_c(x_i), E_p(x_j[t]))`.
A small conv classifier, trained once per dataset config on rendered frames with their true
factors (and cached), reads every object of a drawn frame:

- its content class: Moving dSprites (shape, scale), 3 x 6 = 18 classes (orientation and
  the front order are not scored); Moving MNIST the digit;
- its centre, in pixels of the frame (the centre of the sprite's 16 x 16 crop, of the
  digit's 32 x 32 box, on the 64 x 64 canvas, scaled to the frame size).

Objects. Both datasets put object k in colour channel k when `channels = 3` (the paper's
setting and every config here), so each channel is read on its own: `CropNet`, shared by
the channels, cuts a window around the channel's object (the centre of mass of its pixels
above half its maximum) and classifies it, the centre being the window's plus a regressed
offset; object k of the drawing is compared with object k of the content source (content)
and of the pose source (centre). With one object any channel count reads that way. In
grayscale with several objects no channel says which is which: `FrameNet` reads K slots
from the whole frame (trained in raster order of the true centres), the pose source's
objects are matched to the slots by the permutation of least total distance, and content
is scored as a multiset (such a model may draw the content source's objects in either
order); it is slower to train and untested for accuracy.

Numbers (`score`): `content_accuracy`, the fraction of objects whose content is the content
source's; `<factor>_accuracy` per content factor (shape, scale; digit); `frame_accuracy`,
the fraction of frames with every object right; `position_error_px`, the mean distance in
frame pixels from the pose source's true centre. Beside them (`Classifier.ceiling`, `.blob`):
the same classifier on held-out true test-split frames (the ceiling), and on those frames
turned to `blobs` (discs of the same area at the same place: shape lost, size and place
kept; what a model whose analogies are blobs reaches). Chance (`chance`) is what a random
other video's content drawn at the right place scores: the sum of squared label
frequencies, 1/18 for uniform (shape, scale), 1/3 for shape.

  from mipae_jax.metrics import analogy
  results = analogy.evaluate_analogies(config, ae_variables, source, n=500, seed=0,
                                       cache_dir='~/.cache/mipae_jax/analogy')
  results['content_accuracy'], results['ceiling_content_accuracy'], results['protocol']

Lower level: `load_or_train(data_config, cache_dir)` -> `Classifier`;
`analogy_accuracy(classifier, draw, videos, factors)` with any `draw(content_frames
[B, H, W, C], pose_videos [B, T, H, W, C]) -> [B, T, H, W, C]` (`model_draw`, `run_draw`);
`score(classifier, frames, content, pose)` for frames drawn some other way.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from mipae_jax import compiler, data, errors, models, predict

FORMAT = 1  # Version of the cached classifier file; bumping it retrains every cache.
DEFAULT_CACHE_DIR = '~/.cache/mipae_jax/analogy'
# config.data fields that change what one frame looks like (the hash of the cache file).
FRAME_FIELDS = ('name', 'image_size', 'channels', 'num_objects', 'rotation', 'path',
                'split_seed')
PREDICT_BATCH = 256

PROTOCOL = (
    "Analogy accuracy: n test videos (source.test_videos(seed, n)); video i's content (its "
    'frame 0) is drawn with every pose of video pi(i), pi a seeded derangement: '
    'D(E_c(x_i[0]), E_p(x_pi(i)[t])) for every t (predict.analogies). A conv classifier '
    'trained on rendered frames with their true factors reads each object (each colour '
    "channel on its own, from a window around its object; grayscale: K slots matched to "
    "the pose source's objects by least distance, content as a multiset): its content "
    'class (dSprites shape x scale, MNIST digit) and its centre. content_accuracy: fraction '
    "of objects whose content is video i's; position_error_px: mean distance, in frame "
    "pixels, from the centre of video pi(i)'s object at frame t. ceiling_*: the classifier "
    'on held-out true test-split frames; blob_*: on those frames with each object turned '
    'to a disc of its area at its place; chance_*: a random other video\'s content drawn '
    'at the right place (sum of squared label frequencies).')


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """How the classifier is trained (part of the cache key). The default is sized for the
  paper's config (64 x 64, two sprites): two minutes once on a loaded 2-core CPU, after
  which it reads held-out true frames 0.966 right (shape 0.983, scale 0.975, centres
  0.20 px off; 2000 steps: 0.968, 0.982, 0.976, 0.16 px)."""
  steps: int = 1000
  batch_size: int = 64  # Frames per step (each gives one example per object channel).
  learning_rate: float = 3e-3  # Adam, cosine decay to 0 over `steps`.
  width: int = 16  # Channels of the first conv (later ones twice as many; FrameNet up to 4x).
  hidden: int = 128
  position_weight: float = 1.0  # Huber loss on the centre (pixels) beside the content CE.
  heldout_frames: int = 4000  # True test-split frames the ceiling is measured on.
  seed: int = 0

  def describe(self) -> str:
    return (f'conv classifier of width {self.width} (a window around each object; '
            f'grayscale objects: slots of the whole frame), MLP {self.hidden}, Adam lr '
            f'{self.learning_rate:g} cosine, {self.steps} steps of {self.batch_size} fresh '
            f'frames, seed {self.seed}; '
            f'ceiling on {self.heldout_frames} held-out test frames')


DEFAULT = ClassifierConfig()


# ----------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a dataset's objects, their content labels and their centres are.

  Attributes:
    num_objects: K.
    per_channel: object k is colour channel k (classified one channel at a time).
    content_columns: per object, its content factor columns (shape, scale / digit).
    content_names: the factors those columns hold ('shape', 'scale' / 'digit').
    class_sizes: levels of each of those factors; the class is their joint index.
    pose_columns: per object, its (x, y) pose factor columns.
    grid_pixels: canvas pixel (64 x 64) of the centre of an object at each grid level.
    box: side (canvas pixels) of the square an object is drawn in (sprite crop, digit).
    image_size: frame side H = W.
    channels: C.
    train_splits: the splits the classifier trains on, a step each in turn (dSprites:
      both, so it has seen every (shape, scale) class, which with rotation on the split
      holds out; MNIST: the train digits, so the ceiling is read on digits it never saw).
  """
  num_objects: int
  per_channel: bool
  content_columns: tuple[tuple[int, ...], ...]
  content_names: tuple[str, ...]
  class_sizes: tuple[int, ...]
  pose_columns: tuple[tuple[int, int], ...]
  grid_pixels: tuple[float, ...]
  box: int
  image_size: int
  channels: int
  train_splits: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return int(np.prod(self.class_sizes))

  @property
  def crop(self) -> int:
    """Side of the window `CropNet` reads: the object's box at the frame size and a
    margin of 2 pixels a side (the located centre is off by a pixel or so), even."""
    return 2 * int(np.ceil(self.box * self.image_size / 64 / 2)) + 4

  @property
  def slots(self) -> int:
    """Objects one network input holds: 1 per channel, or all K from a grayscale frame."""
    return 1 if self.per_channel else self.num_objects

  def classes(self, content) -> np.ndarray:
    """Content table `[M, Kc]` -> joint class per object `[M, K]`."""
    content = np.asarray(content)
    cols = [np.stack([content[:, c] for c in cs], 0) for cs in self.content_columns]
    return np.stack([np.ravel_multi_index(tuple(c), self.class_sizes) for c in cols], 1)

  def centres(self, pose) -> np.ndarray:
    """Pose table `[M, Kp]` -> true centres `[M, K, 2]` (x, y) in frame pixels."""
    pose = np.asarray(pose)
    px = np.asarray(self.grid_pixels) * self.image_size / 64
    return np.stack([np.stack([px[pose[:, cx]], px[pose[:, cy]]], -1)
                     for cx, cy in self.pose_columns], 1)


def layout_of(source) -> Layout:
  """The `Layout` of a Moving dSprites or Moving MNIST source (stream or prepared)."""
  names = source.content_factor_names
  pose_names = source.pose_factor_names
  k = sum(n.startswith('x_') for n in pose_names)
  if 'shape_0' in names:
    from mipae_jax.data import dsprites
    per = ('shape', 'scale')
    sizes = (dsprites.NUM_SHAPES, dsprites.NUM_SCALES)
    # A prepared (TFDS) source keeps no renderer: its frames are the built-in one's.
    crop = getattr(source, 'sprites', np.zeros((1, dsprites.CROP))).shape[-1]
    grid = np.asarray(getattr(source, 'position_pixels', dsprites.POSITION_PIXELS)) + crop / 2
    box, splits = crop, ('train', 'test')
  elif 'digit_0' in names:
    from mipae_jax.data import moving_mnist
    per, sizes = ('digit',), (10,)
    grid = np.arange(moving_mnist.NUM_POSITIONS) + moving_mnist.DIGIT / 2
    box, splits = moving_mnist.DIGIT, ('train',)
  else:
    raise errors.ConfigError(
        f'analogy accuracy: expected a Moving dSprites or Moving MNIST source (content '
        f'factors shape_k, scale_k or digit_k), found content factors {names}. It needs '
        'objects with a shape label and a pixel position; MPI3D has neither.')
  return Layout(
      num_objects=k, per_channel=source.channels > 1 or k == 1,
      content_columns=tuple(tuple(names.index(f'{p}_{j}') for p in per) for j in range(k)),
      content_names=per, class_sizes=sizes,
      pose_columns=tuple((pose_names.index(f'x_{j}'), pose_names.index(f'y_{j}'))
                         for j in range(k)),
      grid_pixels=tuple(float(g) for g in grid), box=int(box), image_size=source.image_size,
      channels=source.channels, train_splits=splits)


# ----------------------------------------------------------------------------- network


def _coords(b, h, w, dtype):
  yy, xx = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing='ij')
  return jnp.broadcast_to(jnp.stack([xx, yy], -1), (b, h, w, 2)).astype(dtype)


def locate(x):
  """Where to look for the object of each one-channel image `x [B, H, W, 1]`: the centre
  of mass `[B, 2]` (x, y; pixel centres at i + 0.5) of its pixels above half its maximum
  (a decoder's faint background does not pull it); the frame centre if it is empty."""
  v = x[..., 0]
  w = jnp.maximum(v - 0.5 * v.max(axis=(1, 2), keepdims=True), 0.0)
  mass = w.sum(axis=(1, 2))
  h, wd = v.shape[1:]
  gx = (w * (jnp.arange(wd) + 0.5)[None, None, :]).sum(axis=(1, 2))
  gy = (w * (jnp.arange(h) + 0.5)[None, :, None]).sum(axis=(1, 2))
  safe = jnp.maximum(mass, 1e-6)
  return jnp.where(mass[:, None] > 1e-6, jnp.stack([gx / safe, gy / safe], -1),
                   jnp.array([wd / 2, h / 2], x.dtype))


class CropNet(nn.Module):
  """One object per one-channel image: `x [B, H, W, 1]` -> (content logits `[B, 1,
  classes]`, centre `[B, 1, 2]` (x, y) in pixels).

  A window of side `crop` is cut around the object (`locate`), so the network sees the
  object centred, whatever its place: what it is takes a few hundred steps to learn,
  not thousands. The centre is the window's plus a regressed offset (the crop's pixel
  grid and the shape's centroid are not its true centre)."""
  num_classes: int
  crop: int
  width: int
  hidden: int

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    c = self.crop
    origin = jnp.round(locate(x) - c / 2).astype(jnp.int32)  # [B, 2] (left, top)
    padded = jnp.pad(x[..., 0], ((0, 0), (c, c), (c, c)))
    cut = lambda im, o: jax.lax.dynamic_slice(im, (o[1] + c, o[0] + c), (c, c))
    y = jax.vmap(cut)(padded, origin)[..., None]
    y = jnp.concatenate([y, _coords(b, c, c, x.dtype)], -1)
    y = nn.relu(nn.Conv(self.width, (3, 3), name='conv0')(y))
    y = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=2, name='down')(y))
    y = nn.relu(nn.Conv(2 * self.width, (3, 3), name='conv1')(y))
    feats = nn.relu(nn.Dense(self.hidden, name='hidden')(y.reshape(b, -1)))
    logits = nn.Dense(self.num_classes, name='content')(feats)
    centre = origin + c / 2 + nn.Dense(2, name='offset')(feats)
    return logits[:, None], centre[:, None].astype(x.dtype)


class FrameNet(nn.Module):
  """K objects of a grayscale frame: `x [B, H, W, C]` -> (content logits `[B, K,
  classes]`, centres `[B, K, 2]` (x, y) in pixels), slot k the k-th in raster order.

  Stride-2 blocks down to 8 x 8; the head reads the features both pooled over space
  (what the objects are, wherever they are) and flattened (where they are, which slot is
  which), with coordinate channels in the input."""
  slots: int
  num_classes: int
  width: int
  hidden: int

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    x = jnp.concatenate([x, _coords(b, h, w, x.dtype)], -1)
    width, i = self.width, 0
    while x.shape[1] > 8:  # 32 -> 8 in two blocks, 64 -> 8 in three.
      x = nn.relu(nn.Conv(width, (4, 4), strides=2, name=f'down{i}')(x))
      x = nn.relu(nn.Conv(width, (3, 3), name=f'conv{i}')(x))
      width, i = min(2 * width, 4 * self.width), i + 1
    feats = jnp.concatenate([x.max(axis=(1, 2)), x.mean(axis=(1, 2)), x.reshape(b, -1)], -1)
    feats = nn.relu(nn.Dense(self.hidden, name='hidden')(feats))
    logits = nn.Dense(self.slots * self.num_classes, name='content')(feats)
    centre = nn.Dense(self.slots * 2, name='centre')(feats) * (h / 2) + h / 2
    return logits.reshape(b, self.slots, -1), centre.reshape(b, self.slots, 2)


def _network(layout: Layout, cfg: ClassifierConfig) -> nn.Module:
  if layout.per_channel:
    return CropNet(num_classes=layout.num_classes, crop=layout.crop, width=cfg.width,
                   hidden=cfg.hidden)
  return FrameNet(slots=layout.slots, num_classes=layout.num_classes, width=cfg.width,
                  hidden=cfg.hidden)


def _inputs(layout: Layout, frames) -> np.ndarray:
  """Frames `[M, H, W, C]` -> network inputs: `[M * K, H, W, 1]` (object k's channel,
  object-minor) per channel, or the frames themselves."""
  frames = np.asarray(frames, np.float32)
  if not layout.per_channel:
    return frames
  k = layout.num_objects
  x = np.moveaxis(frames[..., :k], -1, 1)  # [M, K, H, W]
  return x.reshape((-1,) + frames.shape[1:3] + (1,))


def _targets(layout: Layout, content, pose):
  """Labels per network input: (classes `[M', S]`, centres `[M', S, 2]`). Grayscale
  slots are in raster order of the true centres (y, then x)."""
  cls, ctr = layout.classes(content), layout.centres(pose)
  if layout.per_channel:
    return cls.reshape(-1, 1), ctr.reshape(-1, 1, 2)
  order = np.lexsort((ctr[..., 0], ctr[..., 1]), axis=-1)  # [M, K]
  return (np.take_along_axis(cls, order, 1),
          np.take_along_axis(ctr, order[..., None], 1))


def blobs(frames, supersample: int = 4, chunk: int = 256) -> np.ndarray:
  """What a model that keeps where an object is but not its shape draws: each channel of
  each frame replaced by a disc of the same mass (area, in pixels) centred at its centre
  of mass. `frames [..., H, W, C]` -> the same shape. (One disc per channel: in grayscale
  with several objects they merge into one.)"""
  frames = np.asarray(frames, np.float32)
  x = frames.reshape((-1,) + frames.shape[-3:])
  m, h, w, c = x.shape
  s = supersample
  sub_y = (np.arange(h * s) + 0.5) / s
  sub_x = (np.arange(w * s) + 0.5) / s
  out = np.empty_like(x)
  for i in range(0, m, chunk):
    v = x[i:i + chunk]
    mass = v.sum(axis=(1, 2))  # [B, C]
    safe = np.maximum(mass, 1e-6)
    gy = (v * (np.arange(h) + 0.5)[None, :, None, None]).sum(axis=(1, 2)) / safe
    gx = (v * (np.arange(w) + 0.5)[None, None, :, None]).sum(axis=(1, 2)) / safe
    r2 = mass / np.pi
    for ch in range(c):
      d2 = ((sub_y[None, :, None] - gy[:, ch, None, None]) ** 2
            + (sub_x[None, None, :] - gx[:, ch, None, None]) ** 2)
      disc = (d2 <= r2[:, ch, None, None]).reshape(len(v), h, s, w, s).mean(axis=(2, 4))
      out[i:i + chunk, ..., ch] = disc
  return out.reshape(frames.shape)


# ----------------------------------------------------------------------------- classifier


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained classifier of one dataset config.

  Attributes:
    layout: the dataset's `Layout`.
    config: the `ClassifierConfig` it was trained with.
    params: the network's parameters.
    ceiling: `score` of held-out true test-split frames (plain floats).
    blob: `score` of the same frames turned to `blobs` (shape lost, place and area kept):
      the level at which a model's analogies are blobs.
    seconds: training time (0 when read from the cache).
  """
  layout: Layout
  config: ClassifierConfig
  params: dict
  ceiling: dict
  blob: dict
  seconds: float = 0.0

  def predict(self, frames):
    """Frames `[M, H, W, C]` -> (classes `[M, K]`, centres `[M, K, 2]` (x, y) pixels);
    in grayscale the K slots are unordered."""
    x = _inputs(self.layout, frames)
    apply = _apply_fn(self.layout, self.config)
    classes, centres = [], []
    for s in range(0, len(x), PREDICT_BATCH):
      chunk = x[s:s + PREDICT_BATCH]
      valid = len(chunk)
      if valid < PREDICT_BATCH:  # One shape: one compile.
        chunk = np.concatenate([chunk, np.zeros((PREDICT_BATCH - valid,) + chunk.shape[1:],
                                                chunk.dtype)])
      c, p = jax.device_get(apply(self.params, chunk))
      classes.append(c[:valid])
      centres.append(p[:valid])
    k = self.layout.num_objects
    m = len(np.asarray(frames))
    return (np.concatenate(classes).reshape(m, k),
            np.concatenate(centres).reshape(m, k, 2))


@functools.cache
def _apply_fn(layout: Layout, cfg: ClassifierConfig):
  net = _network(layout, cfg)

  def apply(params, x):
    logits, centre = net.apply({'params': params}, x)
    return jnp.argmax(logits, -1), centre

  return compiler.jit(apply)


def frame_source(data_config):
  """The dataset of `data_config` as single frames (T = 1), rendered as training goes
  (`pipeline='stream'`; Moving MNIST reads `config.data.path`)."""
  c = ml_collections.ConfigDict(data_config.to_dict())
  c.input_frames, c.target_frames, c.pipeline = 1, 0, 'stream'
  return data.make_source(c)


def train_classifier(data_config, cfg: ClassifierConfig = DEFAULT, log=None) -> Classifier:
  """Trains the classifier of `data_config`'s frames and measures its levels.

  Each step draws `batch_size` new single frames (`frame_source`, its jitted sampler)
  from the layout's train splits in turn; the ceiling and blob level are read on
  `heldout_frames` test-split frames drawn apart (`sample_static`, a stream of its own).
  """
  t0 = time.time()
  source = frame_source(data_config)
  layout = layout_of(source)
  net = _network(layout, cfg)
  shape = _inputs(layout, np.zeros((1, layout.image_size, layout.image_size,
                                    layout.channels), np.float32)).shape
  params = compiler.jit_once(net.init)(jax.random.key(cfg.seed),
                                       jnp.zeros(shape, jnp.float32))['params']
  tx = optax.adam(optax.cosine_decay_schedule(cfg.learning_rate, max(cfg.steps, 1)))
  opt_state = tx.init(params)

  def train_step(params, opt_state, x, cls, ctr):
    def loss_fn(p):
      logits, centre = net.apply({'params': p}, x)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, cls).mean()
      pos = optax.huber_loss(centre, ctr, delta=1.0).mean()
      return ce + cfg.position_weight * pos, (ce, pos)

    (_, (ce, pos)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {'ce': ce, 'pos': pos}

  step_fn = compiler.jit(train_step, donate_argnums=(0, 1))
  root = jax.random.key(cfg.seed)
  for step in range(cfg.steps):
    split = layout.train_splits[step % len(layout.train_splits)]
    videos, factors = jax.device_get(
        source.jit_sample_batch(jax.random.fold_in(root, step), cfg.batch_size, split))
    frames = videos[:, 0]
    cls, ctr = _targets(layout, factors['content'][:, 0], factors['pose'][:, 0])
    params, opt_state, metrics = step_fn(params, opt_state, _inputs(layout, frames),
                                         cls.astype(np.int32), ctr.astype(np.float32))
    if log is not None and (step + 1) % max(cfg.steps // 10, 1) == 0:
      log(f'analogy classifier step {step + 1}/{cfg.steps}: '
          f'{ {k: round(float(v), 4) for k, v in metrics.items()} }')
  classifier = Classifier(layout, cfg, params, {}, {})
  frames, content, pose = source.sample_static([cfg.seed, 1], cfg.heldout_frames, 'test')
  return dataclasses.replace(classifier, ceiling=score(classifier, frames, content, pose),
                             blob=score(classifier, blobs(frames), content, pose),
                             seconds=time.time() - t0)


def cache_key(data_config, cfg: ClassifierConfig = DEFAULT) -> str:
  """Hash of what defines the classifier: the frame fields of `config.data`, `cfg`."""
  fields = {f: data_config.get(f, None) for f in FRAME_FIELDS}
  text = json.dumps({'format': FORMAT, 'data': fields, 'classifier': dataclasses.asdict(cfg)},
                    sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir: str, data_config, cfg: ClassifierConfig = DEFAULT) -> str:
  return os.path.join(os.path.expanduser(cache_dir),
                      f'{data_config.name}_{cache_key(data_config, cfg)}.npz')


def save(classifier: Classifier, path: str) -> None:
  """Writes parameters, ceiling and blob level to `path` (.npz, no pickle), atomically."""
  arrays = {f'params/{k}': np.asarray(v) for k, v in
            traverse_util.flatten_dict(jax.device_get(classifier.params), sep='/').items()}
  arrays['levels'] = np.array(json.dumps({'ceiling': classifier.ceiling,
                                          'blob': classifier.blob}))
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load(path: str, data_config, cfg: ClassifierConfig = DEFAULT) -> Classifier | None:
  """The classifier saved at `path`, or None if it is missing, unreadable or its
  parameters do not fit the network `data_config` and `cfg` build."""
  layout = layout_of(frame_source(data_config))
  try:
    with np.load(path, allow_pickle=False) as f:
      flat = {k[len('params/'):]: f[k] for k in f.files if k.startswith('params/')}
      levels = json.loads(str(f['levels']))
  except (OSError, ValueError, KeyError):
    return None
  shape = _inputs(layout, np.zeros((1, layout.image_size, layout.image_size,
                                    layout.channels), np.float32)).shape
  abstract = jax.eval_shape(_network(layout, cfg).init, jax.random.key(0),
                            jax.ShapeDtypeStruct(shape, jnp.float32))['params']
  want = traverse_util.flatten_dict(abstract, sep='/')
  if set(want) != set(flat) or any(want[k].shape != flat[k].shape for k in want):
    return None
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep='/')
  return Classifier(layout, cfg, params, levels['ceiling'], levels['blob'])


def load_or_train(data_config, cache_dir: str | None = DEFAULT_CACHE_DIR,
                  cfg: ClassifierConfig = DEFAULT, log=None) -> Classifier:
  """The classifier of `data_config`: read from `cache_dir` (keyed by `cache_key`), or
  trained and saved there; `cache_dir=None` trains in memory and saves nothing."""
  path = None if cache_dir is None else cache_path(cache_dir, data_config, cfg)
  if path is not None and os.path.exists(path):
    found = load(path, data_config, cfg)
    if found is not None:
      return found
  classifier = train_classifier(data_config, cfg, log=log)
  if path is not None:
    save(classifier, path)
  return classifier


# ----------------------------------------------------------------------------- scoring


def _best_permutation(pred, true) -> np.ndarray:
  """Per frame, the permutation of predicted slots closest to the true centres:
  `pred, true [M, K, 2]` -> `[M, K]` slot index for each true object."""
  k = true.shape[1]
  perms = np.array(list(itertools.permutations(range(k))))  # [P, K]; K <= 3 in practice.
  dist = np.linalg.norm(pred[:, perms] - true[:, None], axis=-1).sum(-1)  # [M, P]
  return perms[np.argmin(dist, axis=1)]


def _multiset_hits(pred, true) -> np.ndarray:
  """Per frame, how many of `true [M, K]`'s labels `pred [M, K]` holds, as multisets."""
  hits = np.zeros(len(true), np.int64)
  for v in np.unique(true):
    hits += np.minimum((pred == v).sum(1), (true == v).sum(1))
  return hits


def _flat(frames, content, pose):
  """Frames `[N, (T,) H, W, C]` with content `[N, (T,) Kc]` (broadcast over T) and pose
  `[N, (T,) Kp]` -> `[M, H, W, C]`, `[M, Kc]`, `[M, Kp]`."""
  frames = np.asarray(frames)
  lead = frames.shape[:-3]
  content = np.asarray(content)
  if content.ndim < len(lead) + 1:  # One content per video: the same at every t.
    content = content.reshape(content.shape[:1] + (1,) * (len(lead) - 1) + content.shape[1:])
  content = np.broadcast_to(content, lead + content.shape[-1:])
  frames = frames.reshape((-1,) + frames.shape[-3:])
  return (frames, content.reshape(len(frames), -1),
          np.asarray(pose).reshape(len(frames), -1))


def _tally(classifier: Classifier, frames, content, pose) -> dict:
  """Per-frame counts `[M]` of `score`: objects right (jointly and per factor), and the
  summed centre error."""
  layout = classifier.layout
  frames, content, pose = _flat(frames, content, pose)
  pred_cls, pred_ctr = classifier.predict(frames)
  true_cls, true_ctr = layout.classes(content), layout.centres(pose)
  if not layout.per_channel:
    pred_ctr = np.take_along_axis(pred_ctr, _best_permutation(pred_ctr, true_ctr)[..., None],
                                  1)

  def hits(p, t):  # [M] objects right per frame.
    return (p == t).sum(1) if layout.per_channel else _multiset_hits(p, t)

  out = {'content': hits(pred_cls, true_cls)}
  for name, p, t in zip(layout.content_names, np.unravel_index(pred_cls, layout.class_sizes),
                        np.unravel_index(true_cls, layout.class_sizes), strict=True):
    out[name] = hits(p, t)
  out['error'] = np.linalg.norm(pred_ctr - true_ctr, axis=-1).sum(1)
  return out


def _summary(layout: Layout, tallies: list[dict]) -> dict:
  t = {k: np.concatenate([x[k] for x in tallies]) for k in tallies[0]}
  k, m = layout.num_objects, len(t['content'])
  out = {'content_accuracy': float(t['content'].sum() / (m * k))}
  for name in layout.content_names:
    out[f'{name}_accuracy'] = float(t[name].sum() / (m * k))
  out['frame_accuracy'] = float(np.mean(t['content'] == k))
  out['position_error_px'] = float(t['error'].sum() / (m * k))
  out['n_frames'] = float(m)
  out['n_objects'] = float(k)
  return out


def score(classifier: Classifier, frames, content, pose) -> dict:
  """Scores drawn frames against the content and pose they should show.

  Args:
    frames: `[N, H, W, C]` or `[N, T, H, W, C]`.
    content: the content source's factors, `[N, Kc]` or `[N, T, Kc]` (broadcast over T).
    pose: the pose source's factors, `[N, Kp]` or `[N, T, Kp]`.
  Returns:
    Plain floats: `content_accuracy`, `<factor>_accuracy`, `frame_accuracy`,
    `position_error_px`, and the counts `n_frames`, `n_objects`.
  """
  return _summary(classifier.layout, [_tally(classifier, frames, content, pose)])


def chance(layout: Layout, content) -> dict:
  """What a drawing of a random other video's content scores: per factor (and jointly)
  the probability that two distinct content sources' objects share the label."""
  content = np.asarray(content).reshape(-1, np.shape(content)[-1])
  cls = layout.classes(content).reshape(-1)

  def collide(labels):
    n = len(labels)
    counts = np.unique(labels, return_counts=True)[1].astype(np.float64)
    return float((np.sum(counts ** 2) - n) / max(n * (n - 1), 1))

  out = {'content_accuracy': collide(cls)}
  for name, f in zip(layout.content_names, np.unravel_index(cls, layout.class_sizes),
                     strict=True):
    out[f'{name}_accuracy'] = collide(f)
  return out


def derangement(n: int, seed: int = 0) -> np.ndarray:
  """`pose_of [n]`: a seeded permutation with no fixed point (video i is never its own
  pose source): a random cycle through all n videos."""
  if n < 2:
    raise ValueError(f'analogies need at least 2 videos, found {n}.')
  order = np.random.default_rng(np.random.SeedSequence([seed, n])).permutation(n)
  pose_of = np.empty(n, np.int64)
  pose_of[order] = np.roll(order, -1)
  return pose_of


def analogy_accuracy(classifier: Classifier, draw, videos, factors, pose_of=None,
                     content_frame: int = 0, chunk: int = 100) -> dict:
  """Scores a model's analogies of `videos`.

  Args:
    classifier: from `load_or_train`.
    draw: `draw(content_frames [B, H, W, C], pose_videos [B, T, H, W, C]) -> [B, T, H, W, C]`,
      the content of each content frame drawn with every pose of its pose video.
    videos: `[N, T, H, W, C]`, with `factors = {'content': [N, T, Kc], 'pose': [N, T, Kp]}`.
    pose_of: `[N]`, video i's content is drawn with video `pose_of[i]`'s poses
      (default `derangement(N)`).
    content_frame: the frame of video i whose content is drawn.
    chunk: pairs drawn and scored at a time.
  Returns:
    `score`'s floats for the drawings (with `n_pairs`).
  """
  videos = np.asarray(videos)
  pose_of = derangement(len(videos)) if pose_of is None else np.asarray(pose_of)
  content = np.asarray(factors['content'])[:, content_frame]
  pose = np.asarray(factors['pose'])
  tallies = []
  for s in range(0, len(videos), chunk):  # Drawings of `chunk` pairs at a time in memory.
    i = np.arange(s, min(s + chunk, len(videos)))
    drawn = np.asarray(draw(videos[i, content_frame], videos[pose_of[i]]))
    tallies.append(_tally(classifier, drawn, content[i], pose[pose_of[i]]))
  out = _summary(classifier.layout, tallies)
  out['n_pairs'] = float(len(videos))
  return out


def model_draw(nets: models.Networks, ae_variables):
  """The `draw` of a trained autoencoder (`nets` and their variables): `predict.analogies`
  (jitted once), one content frame and its pose video at a time."""
  fn = compiler.jit(lambda v, c, p: predict.analogies(nets, v, c, p))
  return functools.partial(_pairwise, lambda c, p: fn(ae_variables, c, p))


def run_draw(run):
  """The `draw` of a loaded run (`mipae_jax.load_run(workdir)`): its `Run.analogy`."""
  return functools.partial(_pairwise, run.analogy)


def _pairwise(analogy_fn, content_frames, pose_videos):
  """`analogy_fn(content [1, H, W, C], pose video [T, H, W, C]) -> [1, T, H, W, C]` over
  pairs: `[B, H, W, C], [B, T, H, W, C]` -> `[B, T, H, W, C]`."""
  return np.stack([np.asarray(analogy_fn(c[None], p))[0]
                   for c, p in zip(np.asarray(content_frames), np.asarray(pose_videos),
                                   strict=True)])


def evaluate_analogies(config, ae_variables, source, n: int, seed: int,
                       cache_dir: str | None = DEFAULT_CACHE_DIR,
                       cfg: ClassifierConfig = DEFAULT, log=None) -> dict:
  """The analogy accuracy of a trained autoencoder on `n` test videos drawn by `seed`.

  Returns plain floats: the model's `content_accuracy`, `<factor>_accuracy`,
  `frame_accuracy`, `position_error_px`; `ceiling_*` (held-out true frames), `blob_*`
  (those frames as discs of the objects' areas), `chance_*` (another video's content);
  `n_pairs`, `n_frames`, `classifier_seconds`; and `protocol` (the `PROTOCOL` text and the
  classifier's training).
  """
  t0 = time.time()
  classifier = load_or_train(config.data, cache_dir, cfg, log=log)
  videos, factors = source.test_videos(seed, n)
  out = analogy_accuracy(classifier, model_draw(models.networks(config), ae_variables),
                         videos, factors, pose_of=derangement(n, seed))
  for level in ('ceiling', 'blob'):
    for name, value in getattr(classifier, level).items():
      if not name.startswith('n_'):
        out[f'{level}_{name}'] = float(value)
  content = np.asarray(factors['content'])[:, 0]
  for name, value in chance(classifier.layout, content).items():
    out[f'chance_{name}'] = value
  out['classifier_seconds'] = float(classifier.seconds)
  out['seconds'] = time.time() - t0
  out['protocol'] = f'{PROTOCOL} Classifier: {cfg.describe()}.'
  return out
