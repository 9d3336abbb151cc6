"""dSprites, rendered here, and Moving dSprites videos.

The factor grid is the published one (`dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`):
colour (1) x shape (3: square, ellipse, heart) x scale (6, linspace(0.5, 1, 6)) x
orientation (40, linspace(0, 2pi, 40, endpoint=False)) x posX (32) x posY (32), flat index
`((((shape * 6 + scale) * 40 + orientation) * 32 + x) * 32 + y)`, 737,280 binary 64x64 images.

How we render it: 720 sprites, one per (shape, scale, orientation), each drawn once into a
16x16 crop centred at (8, 8), then placed by translation. Position index i puts the crop's
top-left corner at pixel `POSITION_PIXELS[i] = round(48 * i / 31)`, so sprite centres run
over [8, 56] pixels (the published array spreads them over roughly the same range), x along
columns and y along rows. Every shape fits a disc of radius 7.5 px about its centre (its
pixels lie inside the 16x16 crop), so no sprite is ever clipped by the frame. Shapes are
supersampled 4x4 per pixel and thresholded at one half, which keeps small rotated sprites
from aliasing.

Shapes (unit = the bounding radius, 7.5 px x scale): a square with its corners on the
circle, a 2:1 ellipse, and a heart made of a diamond and two discs. They are our own
drawings: they follow the published grid's factors and layout, not its exact pixels (point
`config.data.path` at the published npz to use those).
"""

from __future__ import annotations

import functools
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np

from mipae_jax import errors
from mipae_jax.data import common

NUM_SHAPES, NUM_SCALES, NUM_ORIENTATIONS, NUM_POSITIONS = 3, 6, 40, 32
SHAPE_NAMES = ('square', 'ellipse', 'heart')
SCALES = np.linspace(0.5, 1.0, NUM_SCALES)
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, NUM_ORIENTATIONS, endpoint=False)
NUM_COMBOS = NUM_SHAPES * NUM_SCALES * NUM_ORIENTATIONS  # 720 sprites.
NUM_IMAGES = NUM_COMBOS * NUM_POSITIONS * NUM_POSITIONS  # 737,280.
CROP = 16  # Side of the crop a sprite is drawn in.
RADIUS = 7.5  # Bounding radius (pixels) of every shape at scale 1.
POSITION_PIXELS = np.round(np.linspace(0, 48, NUM_POSITIONS)).astype(np.int32)
PUBLISHED_FILE = 'dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz'
_FRONT_ENTROPY: dict[tuple, float] = {}  # MovingDSprites._front_entropy, per process.
LATENT_SIZES = (1, NUM_SHAPES, NUM_SCALES, NUM_ORIENTATIONS, NUM_POSITIONS, NUM_POSITIONS)


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Point-in-shape for unit shapes; (u, v) in units of the bounding radius, v upward."""
  if shape == 0:  # Square whose corners touch the unit circle.
    a = 1 / np.sqrt(2)
    return (np.abs(u) <= a) & (np.abs(v) <= a)
  if shape == 1:  # Ellipse, 2:1.
    return (u / 1.0) ** 2 + (v / 0.5) ** 2 <= 1.0
  # Heart: a diamond of side 1 with a disc on each upper edge, shifted so its bounding box
  # is centred and shrunk so its farthest point (0.951 from that centre) is on the unit circle.
  x = u * 0.951
  y = v * 0.951 + 0.073
  h = 0.5 / np.sqrt(2)
  return ((np.abs(x) + np.abs(y) <= 2 * h) | ((x - h) ** 2 + (y - h) ** 2 <= 0.25)
          | ((x + h) ** 2 + (y - h) ** 2 <= 0.25))


@functools.lru_cache(maxsize=1)
def render_sprites() -> np.ndarray:
  """The 720 base sprites, uint8 {0, 1}, `[3, 6, 40, CROP, CROP]`, centred at (8, 8)."""
  ss = 4  # Supersampling per pixel axis.
  offs = (np.arange(CROP * ss) + 0.5) / ss - CROP / 2  # Sub-pixel centres, crop-centred.
  u, v = np.meshgrid(offs, -offs)  # v points up, rows go down.
  out = np.zeros((NUM_SHAPES, NUM_SCALES, NUM_ORIENTATIONS, CROP, CROP), np.uint8)
  for sh in range(NUM_SHAPES):
    for sc, scale in enumerate(SCALES):
      r = RADIUS * scale
      for o, theta in enumerate(ORIENTATIONS):
        # Rotate the sample points by -theta: the shape turns counter-clockwise by theta.
        c, s = np.cos(theta), np.sin(theta)
        uu = (c * u + s * v) / r
        vv = (-s * u + c * v) / r
        hit = _inside(sh, uu, vv).reshape(CROP, ss, CROP, ss).mean(axis=(1, 3))
        out[sh, sc, o] = hit >= 0.5
  return out


def latents_to_index(shape, scale, orientation, x, y):
  """Flat index of the published array for factor indices (arrays broadcast)."""
  return ((((np.asarray(shape) * NUM_SCALES + scale) * NUM_ORIENTATIONS + orientation)
           * NUM_POSITIONS + x) * NUM_POSITIONS + y)


def index_to_latents(index):
  """Inverse of `latents_to_index`: `[..., 5]` (shape, scale, orientation, x, y)."""
  return np.stack(np.unravel_index(np.asarray(index), LATENT_SIZES[1:]), axis=-1)


def render_images(index) -> np.ndarray:
  """Images of the published array at flat indices `[N]` -> uint8 `[N, 64, 64]`.

  `render_images(np.arange(NUM_IMAGES))` is the whole grid (3 GB); render in chunks.
  """
  lat = index_to_latents(np.atleast_1d(index))
  crops = render_sprites()[lat[:, 0], lat[:, 1], lat[:, 2]]
  return common.place_np(crops, POSITION_PIXELS[lat[:, 4]], POSITION_PIXELS[lat[:, 3]],
                         dtype=np.uint8)


def load_dsprites_images(path: str) -> np.ndarray:
  """Loads the user's published dSprites array, uint8 `[737280, 64, 64]` (3 GB in memory).

  Raises FileNotFoundError / ValueError saying what was expected and what was found.
  """
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    path = os.path.join(path, PUBLISHED_FILE)
  if not os.path.exists(path):
    raise errors.DataNotFoundError(
        f'dSprites array not found at {path!r}. Download {PUBLISHED_FILE} from '
        'https://github.com/google-deepmind/dsprites-dataset and set config.data.path to it, '
        "or set config.data.path = '' to use the built-in renderer (no download needed).")
  with (common.reading(path, f'the published {PUBLISHED_FILE}',
                       f'Download {PUBLISHED_FILE} again.'), np.load(path) as f):
    if 'imgs' not in f.files:
      raise errors.DataError(f'{path}: expected key "imgs" (the published dSprites npz), '
                       f'found keys {sorted(f.files)}.')
    imgs = f['imgs']
  expected = (NUM_IMAGES, common.CANVAS, common.CANVAS)
  if imgs.shape != expected or imgs.dtype != np.uint8:
    raise errors.DataError(f'{path}: "imgs" should be uint8 {expected} (the published '
                     f'{PUBLISHED_FILE}), found {imgs.dtype} {imgs.shape}.')
  _check_binary(path, imgs)
  return imgs


def _check_binary(path: str, imgs: np.ndarray) -> None:
  """The published sprites are 0/1 masks; a copy rescaled to 0-255 would make every
  rendered frame saturate, so it is refused with the fix."""
  top = int(imgs.max()) if imgs.size else 0
  if top > 1:
    raise errors.DataError(f'{path}: "imgs" should hold binary 0/1 pixels (the published '
                     f'{PUBLISHED_FILE}), found values up to {top}. If this copy was '
                     'rescaled to 0-255, save it back as (imgs > 127).astype(np.uint8).')


def sprites_from_published(imgs: np.ndarray) -> np.ndarray:
  """Cuts the 720 sprite crops out of the published array (where rendering is not wanted).

  The published grid is built by translation too, but its pixel offsets are its own: we
  measure them from centroids, crop each sprite at position (0, 0), and check that placing
  the crops back reproduces a sample of the array exactly, raising if it does not.

  Returns:
    `(crops uint8 [3, 6, 40, h, h], position_pixels int32 [32])`.
  """
  def centroid(i):
    im = imgs[i].astype(np.float64)
    r, c = np.nonzero(im)
    return r.mean(), c.mean()
  big = latents_to_index(0, NUM_SCALES - 1, 0, 0, np.arange(NUM_POSITIONS))
  rows = np.array([centroid(i)[0] for i in big])
  offsets = np.round(rows - rows[0]).astype(np.int32)
  if np.any(np.diff(offsets) < 0) or offsets[-1] >= common.CANVAS:
    raise errors.DataError(f'dSprites array: sprite rows should move down with posY, found offsets '
                     f'{offsets.tolist()}; is it the published layout?')
  size = common.CANVAS - int(offsets[-1])
  base = latents_to_index(*np.meshgrid(np.arange(3), np.arange(6), np.arange(40),
                                       indexing='ij'), 0, 0).ravel()
  crops = imgs[base][:, :size, :size].reshape(3, 6, 40, size, size)
  rng = np.random.default_rng(0)
  check = rng.integers(0, NUM_IMAGES, 256)
  lat = index_to_latents(check)
  redo = common.place_np(crops[lat[:, 0], lat[:, 1], lat[:, 2]], offsets[lat[:, 4]],
                         offsets[lat[:, 3]], dtype=np.uint8)
  if not np.array_equal(redo, imgs[check]):
    raise errors.DataError('The dSprites array is not a translation grid with integer offsets; '
                     "set config.data.path = '' to use the built-in renderer.")
  return crops, offsets


def contact_sheet(orientations=(0, 3, 7, 12)) -> np.ndarray:
  """Shapes x scales x a few orientations, centred: uint8 image `[H, W]` (0/255)."""
  sprites = render_sprites()
  rows = []
  for sh in range(NUM_SHAPES):
    for o in orientations:
      tiles = [np.pad(sprites[sh, sc, o], 2, constant_values=0) for sc in range(NUM_SCALES)]
      rows.append(np.concatenate(tiles, axis=1))
  sheet = np.concatenate(rows, axis=0) * 255
  return np.kron(sheet, np.ones((4, 4), np.uint8))  # Enlarged 4x to be visible.


def save_contact_sheet(path: str):
  from PIL import Image
  Image.fromarray(contact_sheet()).save(path)


class MovingDSprites(common.VideoSource):
  """Moving dSprites videos (docs/method.md section 4).

  Each of `num_objects` sprites draws a (shape, scale, orientation) combination from the
  split's combinations, a start grid position uniform in 32 x 32, an integer velocity
  uniform in [-2, 2] per axis, and bounces (reflects) at the grid edges. With `rotation`,
  it also draws a start orientation uniform in the split's and an angular velocity in [-2, 2]
  steps that wraps around the 40 orientations.

  Split: the 720 (shape, scale, orientation) combinations are split by `split_seed`, one
  third held out for test (`self.combos['train' | 'test']`). With rotation on, orientation
  is a pose factor that visits every value, so the split is over the 18 (shape, scale)
  pairs instead, and any orientation may appear in both splits.

  Factors (per frame). Content: per sprite k `shape_k, scale_k` (+ `orientation_k` when
  rotation is off), then `front` in RGB mode (which sprite is drawn in front). Pose: per
  sprite `x_k, y_k` (+ `orientation_k` with rotation), grid indices in [0, 32).
  """

  def __init__(self, num_frames: int = 15, image_size: int = 64, channels: int = 3,
               num_objects: int = 2, rotation: bool = False, split_seed: int = 0,
               sprites: np.ndarray | None = None, position_pixels: np.ndarray | None = None):
    self.num_frames = num_frames
    self.image_size = image_size
    self.channels = channels
    self.num_objects = num_objects
    self.rotation = rotation
    self.split_seed = split_seed
    self.on_device = True
    self.sprites = render_sprites() if sprites is None else sprites
    self.position_pixels = POSITION_PIXELS if position_pixels is None else position_pixels
    self._sprites_flat = jnp.asarray(
        self.sprites.reshape((NUM_COMBOS,) + self.sprites.shape[-2:]), jnp.float32)
    self._pos_px = jnp.asarray(self.position_pixels, jnp.int32)
    # Split unit: (shape, scale, orientation) ids, or (shape, scale) ids with rotation.
    units = NUM_SHAPES * NUM_SCALES * (1 if rotation else NUM_ORIENTATIONS)
    train, test = common.split_combos(units, split_seed)
    self.combos = {'train': train, 'test': test}
    self._combos_dev = {k: jnp.asarray(v) for k, v in self.combos.items()}
    content, pose = [], []
    for k in range(num_objects):
      content += [f'shape_{k}', f'scale_{k}'] + ([] if rotation else [f'orientation_{k}'])
      pose += [f'x_{k}', f'y_{k}'] + ([f'orientation_{k}'] if rotation else [])
    if channels == 3:
      content.append('front')
    self.content_factor_names = tuple(content)
    self.pose_factor_names = tuple(pose)
    self._groups = {}  # split -> factor_groups(split), computed once.

  # -- Random draws, shared by the device stream and the numpy reference. --

  def draw_params(self, key: jax.Array, batch_size: int, split: str = 'train'):
    """Initial state of each video: a dict of int32 arrays `[B, K]` (`front`: `[B]`)."""
    self._check_split(split)
    combos = self._combos_dev[split]
    k_c, k_p, k_v, k_o, k_w, k_f = jax.random.split(key, 6)
    b, n = batch_size, self.num_objects
    unit = combos[jax.random.randint(k_c, (b, n), 0, combos.shape[0])]
    if self.rotation:
      shape, scale = unit // NUM_SCALES, unit % NUM_SCALES
      orient = jax.random.randint(k_o, (b, n), 0, NUM_ORIENTATIONS)
      omega = jax.random.randint(k_w, (b, n), -2, 3)
    else:
      shape = unit // (NUM_SCALES * NUM_ORIENTATIONS)
      scale = unit // NUM_ORIENTATIONS % NUM_SCALES
      orient = unit % NUM_ORIENTATIONS
      omega = jnp.zeros((b, n), jnp.int32)
    pos = jax.random.randint(k_p, (b, n, 2), 0, NUM_POSITIONS)
    vel = jax.random.randint(k_v, (b, n, 2), -2, 3)
    front = jax.random.randint(k_f, (b,), 0, n)
    return dict(shape=shape, scale=scale, orient=orient, omega=omega, x=pos[..., 0],
                y=pos[..., 1], vx=vel[..., 0], vy=vel[..., 1], front=front)

  def _factors(self, p, x, y, o, xp):
    """Factor tables `[B, T, K*]` from params and trajectories `[B, K, T]`."""
    t = x.shape[-1]
    bt = lambda a: xp.broadcast_to(a[:, None], (a.shape[0], t))  # [B] -> [B, T]
    content, pose = [], []
    for k in range(self.num_objects):
      content += [bt(p['shape'][:, k]), bt(p['scale'][:, k])]
      if not self.rotation:
        content.append(bt(p['orient'][:, k]))
      pose += [x[:, k], y[:, k]] + ([o[:, k]] if self.rotation else [])
    if self.channels == 3:
      content.append(bt(p['front']))
    return {'content': xp.stack(content, -1).astype(xp.int32),
            'pose': xp.stack(pose, -1).astype(xp.int32)}

  def _trajectories(self, p, xp):
    t = self.num_frames
    x = common.trajectory(p['x'], p['vx'], t, NUM_POSITIONS, xp)  # [B, K, T]
    y = common.trajectory(p['y'], p['vy'], t, NUM_POSITIONS, xp)
    o = xp.mod(p['orient'][..., None] + p['omega'][..., None] * xp.arange(t),
               NUM_ORIENTATIONS)
    return x, y, o

  # -- On-device stream. --

  def render(self, p):
    """Videos `[B, T, H, W, C]` and factors from `draw_params` output (jittable)."""
    x, y, o = self._trajectories(p, jnp)
    b, k, t = x.shape
    combo = ((p['shape'][..., None] * NUM_SCALES + p['scale'][..., None]) * NUM_ORIENTATIONS
             + o)  # [B, K, T]
    crops = self._sprites_flat[combo.reshape(-1)]
    masks = common.place(crops, self._pos_px[y.reshape(-1)], self._pos_px[x.reshape(-1)])
    masks = masks.reshape(b, k, t, common.CANVAS, common.CANVAS).transpose(0, 2, 1, 3, 4)
    front = jnp.broadcast_to(p['front'][:, None], (b, t))
    videos = common.compose(masks, front, self.channels, jnp)
    videos = common.area_downsample(videos, self.image_size, jnp)
    return videos, self._factors(p, x, y, o, jnp)

  def sample_batch(self, key: jax.Array, batch_size: int, split: str = 'train'):
    """Videos float32 `[B, T, H, W, C]` and factors `{'content': [B, T, Kc], 'pose': ...}`.

    Pure in `key`; jit with `jax.jit(source.sample_batch, static_argnums=(1, 2))`.
    """
    return self.render(self.draw_params(key, batch_size, split))

  # -- Numpy reference: one video at a time, as the published per-sample loader did. --

  def render_numpy(self, p):
    """Same as `render`, one video at a time in numpy (the reference and the slow path)."""
    p = {k: np.asarray(v) for k, v in p.items()}
    x, y, o = self._trajectories(p, np)
    b = x.shape[0]
    s = self.image_size
    videos = np.zeros((b, self.num_frames, s, s, self.channels), np.float32)
    for i in range(b):
      for t in range(self.num_frames):
        layers = np.zeros((self.num_objects, common.CANVAS, common.CANVAS), np.float32)
        for k in range(self.num_objects):
          sprite = self.sprites[p['shape'][i, k], p['scale'][i, k], o[i, k, t]]
          top, left = self.position_pixels[y[i, k, t]], self.position_pixels[x[i, k, t]]
          layers[k, top:top + sprite.shape[0], left:left + sprite.shape[1]] = sprite
        frame = common.compose(layers, np.asarray(p['front'][i]), self.channels, np)
        videos[i, t] = common.area_downsample(frame, s, np)
    return videos, self._factors(p, x, y, o, np)

  def sample_batch_numpy(self, rng: np.random.Generator, batch_size: int,
                         split: str = 'train'):
    """Numpy generator of the same distribution, drawing with a numpy Generator."""
    self._check_split(split)
    combos = self.combos[split]
    b, n = batch_size, self.num_objects
    unit = combos[rng.integers(0, len(combos), (b, n))]
    if self.rotation:
      p = dict(shape=unit // NUM_SCALES, scale=unit % NUM_SCALES,
               orient=rng.integers(0, NUM_ORIENTATIONS, (b, n)),
               omega=rng.integers(-2, 3, (b, n)))
    else:
      p = dict(shape=unit // (NUM_SCALES * NUM_ORIENTATIONS),
               scale=unit // NUM_ORIENTATIONS % NUM_SCALES, orient=unit % NUM_ORIENTATIONS,
               omega=np.zeros((b, n), np.int64))
    p.update(x=rng.integers(0, NUM_POSITIONS, (b, n)), y=rng.integers(0, NUM_POSITIONS, (b, n)),
             vx=rng.integers(-2, 3, (b, n)), vy=rng.integers(-2, 3, (b, n)),
             front=rng.integers(0, n, (b,)))
    return self.render_numpy(p)

  # -- Static factor draws, shared by the MIG's frames and its ceilings. --

  def _split_units(self, split: str) -> np.ndarray:
    """The split's combination ids ('all': every one of them)."""
    if split == 'all':
      return np.arange(NUM_SHAPES * NUM_SCALES * (1 if self.rotation else NUM_ORIENTATIONS))
    return self.combos[split]

  def _draw_static(self, rng: np.random.Generator, units: np.ndarray, m: int):
    """m frames' factors `(shape, scale, orient, x, y)` [m, K] and `front` [m], uniform."""
    k = self.num_objects
    unit = units[rng.integers(0, len(units), (m, k))]
    if self.rotation:
      shape, scale = unit // NUM_SCALES, unit % NUM_SCALES
      orient = rng.integers(0, NUM_ORIENTATIONS, (m, k))
    else:
      shape = unit // (NUM_SCALES * NUM_ORIENTATIONS)
      scale, orient = unit // NUM_ORIENTATIONS % NUM_SCALES, unit % NUM_ORIENTATIONS
    x = rng.integers(0, NUM_POSITIONS, (m, k))
    y = rng.integers(0, NUM_POSITIONS, (m, k))
    front = rng.integers(0, k, (m,))
    return shape, scale, orient, x, y, front

  # -- Factor groups and their ceilings, for the MIG. --

  def factor_groups(self, split: str = 'test') -> dict:
    """Independent factor groups of `sample_static(split)` with exact entropies.

    Content: per sprite its (shape, scale[, orientation]) combination, uniform over the
    split's combinations, and the front sprite (RGB, several sprites), uniform. Pose:
    x and y of each sprite (ordinal, uniform over 32), and with rotation its orientation
    (uniform over 40). Ceilings I(group; image): a square turned by 90 degrees or an
    ellipse by 180 renders the same pixels, so H(combination | image) is counted from
    the sprites' renderings at every sub-pixel phase the frame size has; the front order
    is invisible when the sprites do not overlap, measured on 20,000 frames. Ceilings
    ignore sprites hidden behind others, so they are upper bounds (conservative scores).
    """
    if split not in self._groups:
      self._groups[split] = self._factor_groups(split)
    return self._groups[split]

  def _render_classes(self) -> np.ndarray:
    """Class id [3, 6, 40] of each sprite's rendering at the frame size (equal = same)."""
    f = common.CANVAS // self.image_size
    crops = self.sprites.reshape((NUM_COMBOS,) + self.sprites.shape[-2:]).astype(np.float32)
    h, w = crops.shape[-2:]
    phases = sorted({int(p) % f for p in self.position_pixels})
    views = []
    for py in phases:
      for px in phases:
        pad = np.zeros((NUM_COMBOS, h + 2 * f, w + 2 * f), np.float32)
        pad[:, py:py + h, px:px + w] = crops
        side = (h + 2 * f) // f * f
        pad = pad[:, :side, :side]
        views.append(pad.reshape(NUM_COMBOS, side // f, f, side // f, f).mean((2, 4)))
    keys = np.concatenate([v.reshape(NUM_COMBOS, -1) for v in views], 1)
    _, cls = np.unique(np.round(keys, 6), axis=0, return_inverse=True)
    return cls.reshape(NUM_SHAPES, NUM_SCALES, NUM_ORIENTATIONS)

  def _front_entropy(self, split: str, n: int = 20_000, seed: int = 0) -> float:
    """H(front | image) in nats: frames for which another front renders the same.

    Kept per process for each setting that determines it: every evaluation builds its
    own source, and rendering the 20,000 frames takes a second."""
    key = (split, n, seed, self.image_size, self.channels, self.num_objects, self.rotation,
           self.combos[split].tobytes(),
           hashlib.sha256(np.ascontiguousarray(self.sprites).tobytes()).hexdigest(),
           np.asarray(self.position_pixels).tobytes())
    if key not in _FRONT_ENTROPY:
      _FRONT_ENTROPY[key] = self._count_front_entropy(split, n, seed)
    return _FRONT_ENTROPY[key]

  def _count_front_entropy(self, split: str, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    k = self.num_objects
    h, w = self.sprites.shape[-2:]
    total = 0.0
    for i in range(0, n, 5000):
      m = min(5000, n - i)
      shape, scale, orient, x, y, front = self._draw_static(rng, self.combos[split], m)
      # Sprites whose crop windows do not meet draw the same pixels whichever is in
      # front (all k orders alike); only the frames where two windows meet (a quarter
      # of them for two sprites) are drawn in every order and compared. The counts,
      # hence the entropy, are the same bits as drawing every frame.
      rows, cols = self.position_pixels[y], self.position_pixels[x]
      meet = np.zeros(m, bool)
      for a in range(k):
        for b in range(a + 1, k):
          meet |= ((np.abs(rows[:, a] - rows[:, b]) < h)
                   & (np.abs(cols[:, a] - cols[:, b]) < w))
      same = np.full(m, float(k))
      sub = np.flatnonzero(meet)
      if len(sub):
        same[sub] = self._orders_alike(shape[sub], scale[sub], orient[sub], x[sub], y[sub],
                                       front[sub])
      total += float(np.sum(np.log(same)))
    return total / n

  def _orders_alike(self, shape, scale, orient, x, y, front) -> np.ndarray:
    """[M] how many of the k front orders render each frame exactly as its own does."""
    (m, k), s = shape.shape, self.image_size
    true = self._frames_static(shape, scale, orient, x, y, front)
    same = np.zeros(m)
    for f in range(k):
      other = self._frames_static(shape, scale, orient, x, y, np.full(m, f))
      equal = np.all((other == true).reshape(m, -1), axis=1)
      # Equal canvases stay equal when downsampled; only the frames whose sprites
      # overlap need the downsampled comparison, which dominates the cost when done
      # on every frame.
      differ = np.flatnonzero(~equal)
      if len(differ) and s != common.CANVAS:
        a, b = (common.area_downsample(frames[differ].astype(np.float32), s, np)
                for frames in (other, true))
        equal[differ] = np.all((a == b).reshape(len(differ), -1), axis=1)
      same += equal
    return same

  def _factor_groups(self, split: str) -> dict:
    self._check_split(split, allow_all=True)
    units = self._split_units(split)
    cls = self._render_classes()
    k = self.num_objects
    per = 2 if self.rotation else 3
    if self.rotation:  # Cells (unit, orientation), all equally likely.
      u = np.repeat(units, NUM_ORIENTATIONS)
      o = np.tile(np.arange(NUM_ORIENTATIONS), len(units))
      r = cls[u // NUM_SCALES, u % NUM_SCALES, o]
      h_unit_given = common.conditional_entropy(u, r)
      h_orient_given = common.conditional_entropy(o, r)
    else:
      r = cls[units // (NUM_SCALES * NUM_ORIENTATIONS), units // NUM_ORIENTATIONS % NUM_SCALES,
              units % NUM_ORIENTATIONS]
      h_unit_given = common.conditional_entropy(units, r)
    h_unit = float(np.log(len(units)))
    content = [common.FactorGroup(f'sprite_{j}', tuple(range(per * j, per * j + per)),
                                  entropy=h_unit, ceiling=h_unit - h_unit_given)
               for j in range(k)]
    if self.channels == 3 and k > 1:
      h_front = float(np.log(k))
      content.append(common.FactorGroup(
          'front', (per * k,), entropy=h_front,
          ceiling=h_front - self._front_entropy('test' if split == 'all' else split)))
    pose = []
    for j in range(k):
      cols = (3 * j, 3 * j + 1) if self.rotation else (2 * j, 2 * j + 1)
      pose += [common.FactorGroup(f'{a}_{j}', (c,), ordinal=True, levels=NUM_POSITIONS,
                                  entropy=float(np.log(NUM_POSITIONS)))
               for a, c in zip('xy', cols, strict=True)]
      if self.rotation:
        h_o = float(np.log(NUM_ORIENTATIONS))
        pose.append(common.FactorGroup(f'orientation_{j}', (3 * j + 2,), entropy=h_o,
                                       ceiling=h_o - h_orient_given))
    return {'content': tuple(content), 'pose': tuple(pose)}

  # -- Static frames for the MIG. --

  def sample_static(self, key_or_seed, n: int, split: str = 'test'):
    """Single frames, factors uniform over the split's combinations, positions and front.

    `split='all'` draws from all 720 combinations. Vectorised numpy: 100,000 frames in a
    few seconds (and 4.9 GB at 64x64x3; see `iter_static`).

    Returns:
      `(images float32 [N, H, W, C], content int32 [N, Kc], pose int32 [N, Kp])`.
    """
    self._check_split(split, allow_all=True)
    rng = common.host_rng(key_or_seed)
    combos = self._split_units(split)
    s = self.image_size
    images = np.empty((n, s, s, self.channels), np.float32)
    content = np.empty((n, len(self.content_factor_names)), np.int32)
    pose = np.empty((n, len(self.pose_factor_names)), np.int32)
    chunk = 5000
    for i in range(0, n, chunk):
      m = min(chunk, n - i)
      shape, scale, orient, x, y, front = self._draw_static(rng, combos, m)
      frames = self._frames_static(shape, scale, orient, x, y, front)
      if s == common.CANVAS:
        images[i:i + m] = frames  # Casts in place: no float32 temporary of the chunk.
      else:
        images[i:i + m] = common.area_downsample(frames.astype(np.float32), s, np)
      p = dict(shape=shape, scale=scale, orient=orient, front=front)
      f = self._factors(p, x[..., None], y[..., None], orient[..., None], np)
      # _factors builds [M, T, K]; the static frame is T = 1 with the sprite's own values.
      content[i:i + m] = f['content'][:, 0]
      pose[i:i + m] = f['pose'][:, 0]
    return images, content, pose

  def _frames_static(self, shape, scale, orient, x, y, front):
    """uint8 frames `[M, 64, 64, C]` from factors `[M, K]` (front `[M]`), vectorised.

    Writes only each sprite's crop window through flat indices instead of composing full
    canvases: the same rule as `common.compose`, about 10x faster for the MIG's 100,000.
    """
    m, k = shape.shape
    c, size = self.channels, common.CANVAS
    crops = self.sprites[shape, scale, orient]  # [M, K, h, w]
    h, w = crops.shape[-2:]
    out = np.zeros((m, size, size, c), np.uint8)
    flat = out.reshape(-1)
    rr = np.arange(h)[:, None]
    cc = np.arange(w)[None, :]

    rows = self.position_pixels[y]  # [M, K] top-left corners of the crops.
    cols = self.position_pixels[x]
    n_idx = np.arange(m)

    def window(top, left, ch):  # Flat indices [M, h, w] of a crop window in channel ch [M].
      return ((n_idx[:, None, None] * size + top[:, None, None] + rr) * size
              + left[:, None, None] + cc) * c + ch[:, None, None]

    if c == 1:
      zero = np.zeros(m, np.int64)
      for j in range(k):
        idx = window(rows[:, j], cols[:, j], zero)
        flat[idx] = np.minimum(flat[idx] + crops[:, j], 1)
      return out
    for j in range(k):  # Every sprite in its own channel...
      flat[window(rows[:, j], cols[:, j], np.full(m, j))] = crops[:, j]
    front_crop = crops[n_idx, front] > 0
    top, left = rows[n_idx, front], cols[n_idx, front]
    for ch in range(c):  # ...then the front sprite's pixels blank the other channels.
      if ch < k:
        idx = window(top, left, np.full(m, ch))
        flat[idx] = np.where(front_crop & (front != ch)[:, None, None], 0, flat[idx])
    return out
