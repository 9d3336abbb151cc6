"""TFDS builders of the three video datasets, written as array_record.

Only `tfds.features.Tensor` features and the `array_record` format are used: those build and
read back through `tfds.data_source` without TensorFlow (Video / Image features and tfrecord
would need it). Examples store frames as uint8 `[T, 64, 64, C]` and factors as int32
`[T, K]`; training reads them with grain (`tfds_source.TrainBatches`), which turns them into
float32 batches `[B, T, H, W, C]` on the devices.

Example i of a split is the on-device stream's video for the key
`fold_in(key(seed + split offset), i)`, rendered by the numpy reference, so the builder and
`source.sample_batch` agree exactly (see `example_key`).

Builders are named `mipae_*` because TFDS already registers `moving_mnist` and `dsprites`.
TFDS writes into a temporary directory and renames it when the build succeeds, so a build
that fails leaves nothing that `tfds.data_source` would load.

  builder = MipaeMovingDsprites(config='tiny', data_dir=DIR, file_format='array_record')
  builder.download_and_prepare()
  source = tfds.data_source('mipae_moving_dsprites/tiny', data_dir=DIR)
  source['train'][3]  # {'video': uint8 [T, 64, 64, C], 'content', 'pose', 'index'}
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil

import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mipae_jax.data import common, dsprites, moving_mnist, mpi3d

_SPLIT_OFFSET = {'train': 0, 'test': 1_000_003}  # Keeps train and test keys apart.


def example_key(seed: int, split: str, index: int) -> jax.Array:
  """The key whose `sample_batch(key, 1, split)` is example `index` of a built split."""
  return jax.random.fold_in(jax.random.key(seed + _SPLIT_OFFSET[split]), index)


@dataclasses.dataclass
class VideoConfig(tfds.core.BuilderConfig):
  """Options of a built video dataset (sizes modest: the on-device stream is the default)."""
  num_frames: int = 15
  channels: int = 3
  num_objects: int = 2
  rotation: bool = False
  split_seed: int = 0
  seed: int = 0
  num_train: int = 10_000
  num_test: int = 2_000


def _configs():
  return [
      VideoConfig(name='default', description='RGB, 15 frames, 10,000 / 2,000 videos.'),
      VideoConfig(name='gray', channels=1, description='Grayscale, 15 frames.'),
      VideoConfig(name='tiny', num_frames=4, num_train=8, num_test=4,
                  description='4-frame videos, 8 / 4 of them, for tests.'),
  ]


def _features(num_frames, channels, kc, kp):
  return tfds.features.FeaturesDict({
      'video': tfds.features.Tensor(shape=(num_frames, 64, 64, channels), dtype=np.uint8),
      'content': tfds.features.Tensor(shape=(num_frames, kc), dtype=np.int32),
      'pose': tfds.features.Tensor(shape=(num_frames, kp), dtype=np.int32),
      'index': tfds.features.Scalar(dtype=np.int64),
  })


def _example(index, video, factors):
  return {'video': np.round(video * 255).astype(np.uint8), 'content': factors['content'],
          'pose': factors['pose'], 'index': index}


class _VideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared generation loop: subclasses give `_source(manual_dir)` and the metadata."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = _configs()

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS's default goes through `importlib_resources`, which is not installed (and not
    # needed): the builder's file path is all it wants.
    return epath.Path(inspect.getfile(cls))

  # What the videos are made from, for the line a build prints.
  MADE_FROM = 'rendered'

  def _source(self, manual_dir, metadata_only=False) -> common.VideoSource:
    raise NotImplementedError

  # TFDS prints 'Downloading and preparing dataset ...' (with a download size of 0) when a
  # build starts and 'Dataset ... downloaded and prepared' when it ends, to stdout and not
  # through logging. Nothing is downloaded here, so a build says in one line what it makes
  # and where; `mipae-prepare` prints where it ended.
  def _log_download_bytes(self):
    c = self.builder_config
    print(f'Building {self.name}/{c.name}: {c.num_train} train and {c.num_test} test videos '
          f'of {c.num_frames} frames, {self.MADE_FROM}, in {self.data_dir}', flush=True)

  def _log_download_done(self):
    pass

  def _info(self):
    src = self._source(None, metadata_only=True)
    return self.dataset_info_from_configs(
        description=self.__doc__,
        disable_shuffling=True,  # Record i is example i: the stream's key for i finds it.
        features=_features(self.builder_config.num_frames, src.channels,
                           len(src.content_factor_names), len(src.pose_factor_names)),
        metadata=tfds.core.MetadataDict(
            content_factor_names=list(src.content_factor_names),
            pose_factor_names=list(src.pose_factor_names),
            # The held-out content combinations are stored with the dataset.
            test_combos=[int(x) for x in getattr(src, 'combos', {}).get('test', [])]),
    )

  def _split_generators(self, dl_manager):
    try:
      manual = dl_manager.manual_dir
    except AssertionError:  # No (or an empty) manual dir: fine for rendered dSprites.
      manual = None
    src = self._source(manual)
    c = self.builder_config
    return {'train': self._generate_examples(src, 'train', c.num_train),
            'test': self._generate_examples(src, 'test', c.num_test)}

  def _generate_examples(self, src, split, n):
    c = self.builder_config
    for i in range(n):
      video, factors = self._render(src, example_key(c.seed, split, i), split)
      yield i, _example(i, video[0], {k: v[0] for k, v in factors.items()})

  def _render(self, src, key, split):
    """One video `[1, T, 64, 64, C]` and its factors for `key`, rendered on the host."""
    return src.sample_batch(key, 1, split)


class MipaeMovingDsprites(_VideoBuilder):
  """Moving dSprites (MIPAE): 2 sprites, per-frame content and pose factors.

  The sprites are rendered procedurally; place the published
  dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz in the manual dir to use it instead.
  """

  name = 'mipae_moving_dsprites'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Optional: put dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz in the manual dir; '
      'without it the sprites are rendered.')

  def _source(self, manual_dir, metadata_only=False):
    c = self.builder_config
    sprites = pix = None
    if manual_dir is not None and os.path.exists(os.path.join(manual_dir,
                                                              dsprites.PUBLISHED_FILE)):
      sprites, pix = dsprites.sprites_from_published(
          dsprites.load_dsprites_images(os.fspath(manual_dir)))
    return dsprites.MovingDSprites(num_frames=c.num_frames, channels=c.channels,
                                   num_objects=c.num_objects, rotation=c.rotation,
                                   split_seed=c.split_seed, sprites=sprites,
                                   position_pixels=pix)

  def _render(self, src, key, split):
    # The numpy reference draws the device stream's parameters: identical videos.
    return src.render_numpy(jax.tree.map(np.asarray, src.draw_params(key, 1, split)))


class MipaeMovingMnist(_VideoBuilder):
  """Moving MNIST (DRNET style) from the MNIST files in the manual dir."""

  name = 'mipae_moving_mnist'
  MADE_FROM = 'from your MNIST files'
  MANUAL_DOWNLOAD_INSTRUCTIONS = ('Put the four MNIST IDX .gz files or mnist.npz in the manual '
                                  f'dir. {moving_mnist.HOW_TO_GET}')
  BUILDER_CONFIGS = [dataclasses.replace(c, channels=1 if c.name == 'default' else c.channels)
                     for c in _configs()]

  def _source(self, manual_dir, metadata_only=False):
    c = self.builder_config
    if metadata_only:
      mnist = {s: (np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.int32))
               for s in common.SPLITS}
    else:
      if manual_dir is None:
        raise FileNotFoundError('mipae_moving_mnist needs a manual dir with the MNIST files. '
                                f'{moving_mnist.HOW_TO_GET}')
      path = os.fspath(manual_dir)
      npz = os.path.join(path, 'mnist.npz')
      mnist = moving_mnist.load_mnist(npz if os.path.exists(npz) else path)
    return moving_mnist.MovingMnist(mnist, num_frames=c.num_frames, channels=c.channels,
                                    num_objects=c.num_objects)

  def _render(self, src, key, split):
    return src.render_numpy(jax.tree.map(np.asarray, src.draw_params(key, 1, split)), split)


class MipaeMpi3d(_VideoBuilder):
  """MPI3D videos: fixed content, the two arm axes bounce. Needs mpi3d_real.npz."""

  name = 'mipae_mpi3d'
  MADE_FROM = 'from your MPI3D array'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Put mpi3d_real.npz in the manual dir. {mpi3d.HOW_TO_GET}'
  BUILDER_CONFIGS = [dataclasses.replace(c, channels=3) for c in _configs()
                     if c.name != 'gray']
  LAYOUTS = None  # Tests inject tiny layouts here.

  def _source(self, manual_dir, metadata_only=False):
    c = self.builder_config
    if metadata_only:
      return _Mpi3dMeta(c.num_frames)
    path = os.fspath(manual_dir or '')
    for name in ('mpi3d_real.npz', 'mpi3d_real.npy'):
      if manual_dir and os.path.exists(os.path.join(path, name)):
        return mpi3d.Mpi3dVideos(os.path.join(path, name), num_frames=c.num_frames,
                                 split_seed=c.split_seed, layouts=self.LAYOUTS)
    raise FileNotFoundError(f'mpi3d_real.npz not found in the manual dir {path!r}. '
                            f'{mpi3d.HOW_TO_GET}')


@dataclasses.dataclass
class _Mpi3dMeta:
  num_frames: int
  channels: int = 3
  content_factor_names: tuple = mpi3d.CONTENT_NAMES
  pose_factor_names: tuple = mpi3d.POSE_NAMES


def build(builder_cls, config: str, data_dir: str, manual_dir: str | None = None):
  """Builds (if needed) one dataset config as array_record; returns the builder."""
  builder = builder_cls(config=config, data_dir=data_dir, file_format='array_record')
  return prepare_builder(builder, manual_dir)


def prepare_builder(builder, manual_dir: str | None = None):
  """`builder.download_and_prepare()`, leaving no files at all if the build fails."""
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except BaseException:
    # TFDS never renames a failed build into place; also remove its scratch directory so a
    # failed build leaves no files at all.
    parent = os.fspath(builder.data_path.parent)
    for name in os.listdir(parent) if os.path.isdir(parent) else []:
      if name.startswith('incomplete.'):
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    raise
  return builder
