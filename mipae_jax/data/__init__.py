"""Datasets of MIPAE: Moving dSprites, Moving MNIST and MPI3D videos with per-frame factors.

`make_source(config.data)` returns a `VideoSource`:

  source = make_source(config.data)
  sample = jax.jit(source.sample_batch, static_argnums=(1, 2))  # When source.on_device.
  videos, factors = sample(key, 100, 'train')  # [B, T, H, W, C], {'content', 'pose'}.
  images, content, pose = source.sample_static(seed, 100_000)  # For the MIG.
  videos, factors = source.test_videos(seed, 1000)  # Fixed across runs.

Each dataset is a `Dataset` in `DATASETS` (`register` adds one): a builder and a check
of its own fields. See docs/method.md section 4 and the module docstrings of `dsprites`,
`moving_mnist`, `mpi3d`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from mipae_jax import errors, registry
from mipae_jax.data.common import VideoSource

__all__ = ['VideoSource', 'make_source', 'validate', 'Dataset', 'DATASETS', 'register']


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One `config.data.name`: how to build its source and what its own fields must hold.

  build: `data_config -> VideoSource` (called after `check`).
  check: `data_config -> None`, raising `errors.ConfigError` / `errors.DataNotFoundError`
    (`fail` below builds the message) for fields this dataset cannot take.
  """
  build: Callable
  check: Callable


DATASETS: registry.Registry[Dataset] = registry.Registry('config.data.name')


def register(name: str, dataset: Dataset) -> Dataset:
  """Makes `dataset` selectable as `config.data.name = name`; refuses a name already
  registered."""
  return DATASETS.register(name, dataset)


def fail(field: str, expected: str, found, fix: str):
  raise errors.ConfigError(f'config.data.{field}: expected {expected}, found {found!r}. {fix}')


PIPELINES = ('stream', 'tfds')


def pipeline_of(data_config) -> str:
  """`config.data.pipeline`; 'stream' for a data config built without one (previews,
  tests of a single source)."""
  return data_config.get('pipeline', 'stream')


def validate(data_config) -> None:
  """Checks `config.data`; raises ConfigError / DataNotFoundError naming the field.

  With `pipeline='tfds'` the prepared dataset is opened and checked against the config
  (the files the stream would read are not needed then)."""
  c = data_config
  if pipeline_of(c) not in PIPELINES:
    fail('pipeline', f'one of {PIPELINES}', c.pipeline,
         "'stream' samples videos as training goes; 'tfds' reads a dataset built by "
         '`python -m mipae_jax.data.prepare`.')
  if pipeline_of(c) == 'tfds':
    _validate_common(c)
    from mipae_jax.data import tfds_source
    tfds_source.open_prepared(c)
    return
  validate_stream_fields(c)


def validate_stream_fields(data_config) -> None:
  """The checks of `validate` for sampling the dataset itself (the stream, `prepare`)."""
  _validate_common(data_config)
  DATASETS[data_config.name].check(data_config)


def _validate_common(c) -> None:
  if c.name not in DATASETS:
    fail('name', f'one of {tuple(DATASETS)}', c.name,
         'Set config.data.name to a known dataset.')
  if not isinstance(c.image_size, int) or c.image_size < 1 or 64 % c.image_size:
    fail('image_size', 'a divisor of 64 (64, 32, 16, ...)', c.image_size,
         'Frames are rendered at 64x64 and area-averaged down to image_size.')
  if c.channels not in (1, 3):
    fail('channels', '3 (one colour channel per object) or 1 (grayscale)', c.channels,
         'Set config.data.channels to 1 or 3.')
  for field in ('input_frames', 'target_frames'):
    v = c[field]
    if not isinstance(v, int) or v < (1 if field == 'input_frames' else 0):
      fail(field, 'an int >= 1' if field == 'input_frames' else 'an int >= 0', v,
           'Videos have input_frames + target_frames frames.')
  if c.rotation and c.name != 'moving_dsprites':
    fail('rotation', 'False for ' + c.name, c.rotation,
         'Sprite rotation exists for moving_dsprites only.')


def _check_objects(c) -> None:
  if not isinstance(c.num_objects, int) or c.num_objects < 1:
    fail('num_objects', 'an int >= 1', c.num_objects, 'Use 2 for the paper setting.')
  if c.channels == 3 and c.num_objects > 3:
    fail('num_objects', 'at most 3 objects in RGB mode (one channel each)', c.num_objects,
         'Use channels = 1 (grayscale) for more objects.')


def _check_path(c, what: str) -> None:
  """A user-provided file or directory: these datasets cannot be rendered."""
  if not c.path:
    raise errors.DataNotFoundError(
        f"config.data.path: expected {what} for {c.name}, found ''. This dataset cannot "
        'be rendered; download it and point config.data.path at it.')
  if not os.path.exists(os.path.expanduser(c.path)):
    raise errors.DataNotFoundError(
        f'config.data.path: {c.path!r} does not exist (looked for it as given, from '
        f'{os.getcwd()!r}). Point config.data.path at your {c.name} file or directory.')


def _num_frames(c) -> int:
  return c.input_frames + c.target_frames


def _build_dsprites(c) -> VideoSource:
  from mipae_jax.data import dsprites
  sprites = position_pixels = None
  if c.path:  # The published array instead of rendering the same factor grid.
    imgs = dsprites.load_dsprites_images(c.path)
    sprites, position_pixels = dsprites.sprites_from_published(imgs)
    del imgs
  return dsprites.MovingDSprites(
      num_frames=_num_frames(c), image_size=c.image_size, channels=c.channels,
      num_objects=c.num_objects, rotation=c.rotation, split_seed=c.split_seed,
      sprites=sprites, position_pixels=position_pixels)


def _build_mnist(c) -> VideoSource:
  from mipae_jax.data import moving_mnist
  return moving_mnist.MovingMnist(
      moving_mnist.load_mnist(c.path), num_frames=_num_frames(c), image_size=c.image_size,
      channels=c.channels, num_objects=c.num_objects)


def _build_mpi3d(c) -> VideoSource:
  from mipae_jax.data import mpi3d
  return mpi3d.Mpi3dVideos(c.path, num_frames=_num_frames(c), image_size=c.image_size,
                           split_seed=c.split_seed)


def _check_mpi3d(c) -> None:
  if c.channels != 3:
    fail('channels', '3 for mpi3d (RGB photographs)', c.channels,
         'Set config.data.channels = 3.')
  _check_path(c, 'mpi3d_real.npz (key "images") or a .npy of it')


register('moving_dsprites', Dataset(build=_build_dsprites, check=_check_objects))
register('moving_mnist', Dataset(
    build=_build_mnist,
    check=lambda c: (_check_objects(c), _check_path(
        c, 'a directory with the MNIST IDX .gz files, a mnist.npz, or a TFDS data dir with '
        'a prepared mnist'))))
register('mpi3d', Dataset(build=_build_mpi3d, check=_check_mpi3d))


def make_source(data_config) -> VideoSource:
  """Builds the `VideoSource` that `config.data` describes (validated first): the
  dataset's own for the stream, the prepared dataset's splits for `pipeline='tfds'`."""
  validate(data_config)
  if pipeline_of(data_config) == 'tfds':
    from mipae_jax.data import tfds_source
    return tfds_source.TfdsVideos(data_config)
  return DATASETS[data_config.name].build(data_config)
