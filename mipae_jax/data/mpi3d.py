"""MPI3D videos from the user's memory-mapped array (never loaded whole).

Factor layout of the published arrays (C order, last axis fastest):
object colour, object shape, object size (2), camera height (3), background colour (3),
horizontal axis (40), vertical axis (40). The colour and shape counts depend on the release,
so they are inferred from the array length:
- 6 x 6 x 2 x 3 x 3 x 40 x 40 = 1,036,800 images: `mpi3d_real.npz` (the published MIPAE code
  indexed it as 4 x 4, which mislabels the objects);
- 4 x 4 x 2 x 3 x 3 x 40 x 40 = 460,800 images: the older toy / realistic releases.

Memory mapping. A `.npy` is mapped directly. `np.savez` (uncompressed) stores `images.npy`
inside the zip byte for byte, so we map it in place at its offset in the `.npz`. A compressed
`.npz` cannot be mapped: it is extracted once to `<name>.images.npy` beside it (written to a
temporary name and renamed, so an interrupted extraction leaves nothing that loads).

Videos fix the five content factors and move the two arm axes with an integer velocity
uniform in [-4, 4] per axis, reflecting at the bounds. One third of the content
combinations is held out for test (seeded). `sample_batch` is a host numpy function.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from mipae_jax import errors
from mipae_jax.data import common

CONTENT_NAMES = ('object_color', 'object_shape', 'object_size', 'camera_height',
                 'background_color')
POSE_NAMES = ('horizontal_axis', 'vertical_axis')
KNOWN_LAYOUTS = {
    6 * 6 * 2 * 3 * 3 * 40 * 40: ('mpi3d_real', (6, 6, 2, 3, 3, 40, 40)),
    4 * 4 * 2 * 3 * 3 * 40 * 40: ('mpi3d_toy/realistic', (4, 4, 2, 3, 3, 40, 40)),
}
HOW_TO_GET = ('Download mpi3d_real.npz from https://github.com/rr-learning/disentanglement_'
              'dataset (key "images") and point config.data.path at it.')


def infer_layout(length: int, layouts: dict | None = None) -> tuple[int, ...]:
  """Factor sizes `(7,)` for an array of `length` images; raises for unknown lengths."""
  layouts = KNOWN_LAYOUTS if layouts is None else layouts
  if length not in layouts:
    known = ', '.join(f'{n:,} ({name}: {" x ".join(map(str, dims))})'
                      for n, (name, dims) in layouts.items())
    raise errors.DataError(f'MPI3D array has {length:,} images; expected one of the known '
                     f'layouts: {known}.')
  return tuple(layouts[length][1])


def _npz_member_memmap(path: str, member: str):
  """Maps an uncompressed `.npz` member in place, or returns None if it is compressed."""
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
      return None
  with open(path, 'rb') as f:
    f.seek(info.header_offset)
    local = f.read(30)
    name_len = int.from_bytes(local[26:28], 'little')
    extra_len = int.from_bytes(local[28:30], 'little')
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read(f)
    offset = f.tell()
  return np.memmap(path, dtype=dtype, mode='r', offset=offset, shape=shape,
                   order='F' if fortran else 'C')


def open_images(path: str, key: str = 'images') -> np.ndarray:
  """Memory-maps the MPI3D images `[N, 64, 64, 3]` uint8 from a `.npz` or `.npy`."""
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise errors.DataNotFoundError(f'MPI3D array not found at {path!r}. {HOW_TO_GET}')
  with common.reading(path, 'MPI3D images (uint8 [N, 64, 64, 3] in a .npz or .npy)',
                      HOW_TO_GET):
    if path.endswith('.npy'):
      images = np.load(path, mmap_mode='r')
    elif path.endswith('.npz'):
      with zipfile.ZipFile(path) as z:
        members = [n[:-4] for n in z.namelist() if n.endswith('.npy')]
      if key not in members:
        raise errors.DataError(f'{path}: expected key {key!r}, found keys {members}. {HOW_TO_GET}')
      images = _npz_member_memmap(path, key + '.npy')
      if images is None:  # Compressed: extract once, then map the extracted copy.
        out = path[:-4] + f'.{key}.npy'
        if not os.path.exists(out):
          tmp = out + '.partial'
          with zipfile.ZipFile(path) as z, z.open(key + '.npy') as src, open(tmp, 'wb') as dst:
            while chunk := src.read(1 << 24):
              dst.write(chunk)
          os.replace(tmp, out)
        images = np.load(out, mmap_mode='r')
    else:
      raise errors.DataError(f'{path}: expected a .npz (key {key!r}) or .npy file. {HOW_TO_GET}')
  if images.ndim != 4 or images.shape[1:] != (64, 64, 3) or images.dtype != np.uint8:
    raise errors.DataError(f'{path}: expected uint8 images [N, 64, 64, 3], found {images.dtype} '
                     f'{list(images.shape)}.')
  return images


class Mpi3dVideos(common.VideoSource):
  """MPI3D videos: fixed content, the arm's two axes bounce (host numpy, `on_device=False`)."""

  def __init__(self, path: str, num_frames: int = 15, image_size: int = 64, split_seed: int = 0,
               layouts: dict | None = None):
    self.images = open_images(path)
    self.layout = infer_layout(self.images.shape[0], layouts)
    self.num_frames = num_frames
    self.image_size = image_size
    self.channels = 3
    self.on_device = False
    self.content_factor_names = CONTENT_NAMES
    self.pose_factor_names = POSE_NAMES
    self.num_combos = int(np.prod(self.layout[:5]))
    train, test = common.split_combos(self.num_combos, split_seed)
    self.combos = {'train': train, 'test': test}

  def _gather(self, content, ax, ay):
    """Frames float32 `[..., H, W, 3]` for factor arrays `content [..., 5]`, `ax, ay [...]`."""
    idx = np.ravel_multi_index(tuple(np.moveaxis(content, -1, 0)) + (ax, ay), self.layout)
    flat = idx.ravel()
    # Sorted unique reads touch each page of the mapped file once, in order.
    uniq, inverse = np.unique(flat, return_inverse=True)
    frames = np.asarray(self.images[uniq])[inverse].reshape(idx.shape + (64, 64, 3))
    return common.area_downsample(frames.astype(np.float32) / 255.0, self.image_size, np)

  def sample_batch(self, key, batch_size: int, split: str = 'train'):
    """Host numpy: videos float32 `[B, T, H, W, 3]`, factors `{'content': [B, T, 5], 'pose':
    [B, T, 2]}`. Deterministic in `key` (a JAX key or an int seed)."""
    self._check_split(split)
    rng = common.host_rng(key)
    b, t = batch_size, self.num_frames
    combos = self.combos[split]
    content = np.stack(np.unravel_index(combos[rng.integers(0, len(combos), b)],
                                        self.layout[:5]), -1)  # [B, 5]
    nx, ny = self.layout[5], self.layout[6]
    ax = common.trajectory(rng.integers(0, nx, b), rng.integers(-4, 5, b), t, nx, np)  # [B, T]
    ay = common.trajectory(rng.integers(0, ny, b), rng.integers(-4, 5, b), t, ny, np)
    content_t = np.broadcast_to(content[:, None], (b, t, 5))
    videos = self._gather(content_t, ax, ay)
    return videos, {'content': content_t.astype(np.int32),
                    'pose': np.stack([ax, ay], -1).astype(np.int32)}

  def factor_groups(self, split: str = 'test') -> dict:
    """Factor groups of `sample_static(split)` with exact entropies: the five content
    factors as one group (the split draws whole combinations, uniformly), and the two
    arm axes, each uniform and ordinal."""
    self._check_split(split)
    content = (common.FactorGroup('+'.join(CONTENT_NAMES), tuple(range(5)),
                                  entropy=float(np.log(len(self.combos[split])))),)
    return {'content': content,
            'pose': common.uniform_groups(POSE_NAMES, {POSE_NAMES[0]: self.layout[5],
                                                       POSE_NAMES[1]: self.layout[6]})}

  def sample_static(self, key_or_seed, n: int, split: str = 'test'):
    """Single frames uniform over the split's content combinations and both axes.

    Returns:
      `(images float32 [N, H, W, 3], content int32 [N, 5], pose int32 [N, 2])`.
    """
    self._check_split(split)
    rng = common.host_rng(key_or_seed)
    combos = self.combos[split]
    content = np.stack(np.unravel_index(combos[rng.integers(0, len(combos), n)],
                                        self.layout[:5]), -1)
    pose = np.stack([rng.integers(0, self.layout[5], n), rng.integers(0, self.layout[6], n)],
                    -1)
    return self._gather(content, pose[:, 0], pose[:, 1]), content.astype(np.int32), \
        pose.astype(np.int32)
