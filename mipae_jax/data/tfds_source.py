"""Training and evaluating from a prepared TFDS dataset (`config.data.pipeline = 'tfds'`).

  mipae-prepare --config=CONFIG --data_dir=DIR   # once
  mipae-train --config=CONFIG --config.data.pipeline=tfds \
      --config.data.tfds_name=NAME --config.data.data_dir=DIR --workdir=...

`prepared_config(config.data, ...)` names the dataset a config trains on: the builder of
`config.data.name` with a builder config holding the video options (frames, channels,
objects, rotation, split and render seeds, split sizes), so two configs that would render
different videos never share a name. `open_prepared` reads it back with
`tfds.data_source` (array_record, no TensorFlow) and refuses, naming the path, what was
expected and the `prepare` command, a dataset that is missing, half-built or built for
other options.

Training batches (`TrainBatches`): the train split in a grain pipeline. Its record order
is a shuffle seeded by `config.seed` and reshuffled every epoch; step s takes the next
`batch_size` records (two batches for the autoencoder step: its own and the critic's).
Each process reads only the rows of the global batch its devices hold, in worker
threads that read ahead of the step; frames travel as uint8 (a quarter of the bytes) and
become float32 (and are area-averaged to `image_size`) in a jitted function on the
devices. The iterator's state is saved with every checkpoint, so a run killed mid-epoch
resumes on the same records. Evaluation reads the test split (`TfdsVideos`).
"""

from __future__ import annotations

import functools
import logging
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mipae_jax import errors
from mipae_jax.data import common, tfds_builders

log = logging.getLogger(__name__)

BUILDERS = {
    'moving_dsprites': tfds_builders.MipaeMovingDsprites,
    'moving_mnist': tfds_builders.MipaeMovingMnist,
    'mpi3d': tfds_builders.MipaeMpi3d,
}
DEFAULT_SIZES = (10_000, 2_000)  # Train and test videos of a prepared dataset.


def prepared_config(data_config, num_train: int, num_test: int, seed: int = 0
                    ) -> tfds_builders.VideoConfig:
  """The builder config holding every option that changes the stored videos."""
  d = data_config
  frames = d.input_frames + d.target_frames
  objects = 1 if d.name == 'mpi3d' else d.num_objects
  name = (f'f{frames}-c{d.channels}-o{objects}{"-rot" if d.rotation else ""}'
          f'-split{d.split_seed}-seed{seed}-n{num_train}x{num_test}')
  return tfds_builders.VideoConfig(
      name=name, description=f'{d.name}: {frames} frames, {num_train} / {num_test} videos.',
      num_frames=frames, channels=d.channels, num_objects=objects, rotation=bool(d.rotation),
      split_seed=d.split_seed, seed=seed, num_train=num_train, num_test=num_test)


def dataset_name(data_config, num_train: int, num_test: int) -> str:
  """`builder/config` as `config.data.tfds_name` takes it."""
  return (f'{BUILDERS[data_config.name].name}/'
          f'{prepared_config(data_config, num_train, num_test).name}')


def prepare_command(data_config) -> str:
  return (f'python -m mipae_jax.data.prepare --config=YOUR_CONFIG '
          f'--data_dir={data_config.data_dir or "DIR"}')


def open_prepared(data_config):
  """`(data sources {'train', 'test'}, tfds DatasetInfo)` of `config.data.tfds_name` in
  `config.data.data_dir`, checked against the config's video options."""
  d = data_config
  fix = f'Build it with `{prepare_command(d)}`, which prints the overrides to train from it.'
  if not d.tfds_name or not d.data_dir:
    raise errors.ConfigError(
        "config.data.pipeline='tfds' needs config.data.tfds_name and config.data.data_dir "
        f"(found {d.tfds_name!r}, {d.data_dir!r}). {fix}")
  builder_name, _, config_name = d.tfds_name.partition('/')
  path = os.path.join(os.path.expanduser(d.data_dir), builder_name, config_name)
  versions = sorted(v for v in (os.listdir(path) if os.path.isdir(path) else [])
                    if not v.startswith('incomplete') and os.path.exists(
                        os.path.join(path, v, 'dataset_info.json')))
  if not versions:
    partial = os.path.isdir(path) and os.listdir(path)
    raise errors.DataNotFoundError(
        f'config.data.tfds_name={d.tfds_name!r}: no prepared dataset at {path} '
        f'({"only an unfinished build is there" if partial else "nothing is there"}). '
        f'{fix}')
  expected = BUILDERS[d.name].name
  if builder_name != expected:
    raise errors.ConfigError(
        f'config.data.tfds_name={d.tfds_name!r} is a {builder_name} dataset, but '
        f'config.data.name={d.name!r} trains on {expected}. {fix}')
  try:
    builder = tfds.builder(d.tfds_name, data_dir=os.path.expanduser(d.data_dir))
    info = builder.info
    sources = tfds.data_source(d.tfds_name, data_dir=os.path.expanduser(d.data_dir))
  except Exception as e:  # noqa: BLE001 - TFDS raises many kinds; the path is what helps.
    raise errors.DataError(
        f'the prepared dataset at {path} cannot be read ({errors.first_line(str(e))}). '
        f'Delete it and build it again: {prepare_command(d)}') from e
  shape = info.features['video'].shape
  frames = d.input_frames + d.target_frames
  if shape[0] != frames or shape[-1] != d.channels:
    raise errors.ConfigError(
        f'the prepared dataset {d.tfds_name} holds videos of {shape[0]} frames x '
        f'{shape[-1]} channels, but the config asks for input_frames + target_frames = '
        f'{frames} frames x data.channels={d.channels}. {fix}')
  for split in ('train', 'test'):
    if split not in sources or not len(sources[split]):
      raise errors.DataError(f'the prepared dataset at {path} has no {split!r} split. {fix}')
  return {s: Records(sources[s], path, prepare_command(d)) for s in ('train', 'test')}, info


class Records:
  """One split's records (`len`, `[i]`), as TFDS's data source gives them. A record
  whose file can no longer be read (the prepared dataset deleted or moved during a run)
  is refused in one line naming the dataset, instead of array_record's `open() failed`."""

  def __init__(self, source, path: str, prepare: str):
    self._source, self._path, self._prepare = source, path, prepare

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i):
    try:
      return self._source[i]
    except (RuntimeError, OSError) as e:
      gone = not os.path.isdir(self._path)
      raise errors.DataNotFoundError(
          f'record {i} of the prepared dataset at {self._path} cannot be read '
          f'({errors.first_line(str(e))}): '
          + ('the dataset is gone (deleted or moved during the run). ' if gone else
             'its files are damaged or were removed. ')
          + f'Put it back, or build it again with `{self._prepare}`, and rerun the same '
          'command: what the run saved is kept.') from e


def record(data_config) -> dict:
  """What a workdir records of the dataset it trains on (refused on resume if it differs)."""
  sources, info = open_prepared(data_config)
  return {'name': data_config.tfds_name, 'version': str(info.version),
          'splits': {s: len(sources[s]) for s in ('train', 'test')}}


def local_rows(sharding, global_shape) -> list[int]:
  """This process's rows of a global batch `global_shape` split by `sharding`: where its
  devices' shards sit (each process reads only these records)."""
  rows = set()
  for index in sharding.addressable_devices_indices_map(global_shape).values():
    rows.update(range(*index[0].indices(global_shape[0])))
  return sorted(rows)


def _to_model(videos, image_size: int):
  """uint8 `[B, T, 64, 64, C]` -> float32 in [0, 1] at `image_size` (on the device)."""
  return common.area_downsample(videos.astype(jnp.float32) / 255.0, image_size, jnp)


class TrainBatches:
  """The global batch of each step from the train split (see the module docstring).

  `batch_fn.for_step(step)` returns `{'video': [B, T, H, W, C]}` (and `'critic_video'` for
  the autoencoder stage), float32, split over `mesh`; steps must be taken in order from
  the one the iterator is at (`restore` puts it at a checkpoint's).
  """

  def __init__(self, config, train_source, mesh, stage: str, num_steps: int,
               num_threads: int = 2, prefetch: int = 2, codes: dict | None = None):
    """`codes` (the LSTM stage, `encode_split`): batches are these records' codes
    `{'h_c', 'h_p'}` instead of their videos, in the same order."""
    self.b = config.batch_size
    self.per_step = 2 if stage == 'ae' else 1
    self.n = len(train_source)
    self.stage = stage
    self.sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    d = config.data
    frames = d.input_frames + d.target_frames
    self.global_shape = (self.b, frames, 64, 64, d.channels)
    rows = local_rows(self.sharding, self.global_shape)
    order = grain.MapDataset.range(self.n).shuffle(seed=config.seed).repeat(None)

    def read(step):
      out = []
      for k in range(self.per_step):
        start = (step * self.per_step + k) * self.b
        ids = [int(order[start + r]) for r in rows]
        out.append(np.asarray(ids, np.int32) if codes is not None else
                   np.stack([train_source[i]['video'] for i in ids]))
      return out

    self._steps = grain.MapDataset.range(num_steps).map(read).to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    self._iter = iter(self._steps)
    self._to_model = jax.jit(functools.partial(_to_model, image_size=d.image_size),
                             out_shardings=self.sharding)
    self._codes = codes
    if codes is not None:
      self.global_shape = (self.b,)
      self._gather = jax.jit(lambda codes, i: jax.tree.map(lambda x: x[i], codes),
                             out_shardings=self.sharding)
    self._epoch = None

  def epoch(self, step: int) -> int:
    """The epoch (pass over the train split) that step `step` reads from."""
    return step * self.per_step * self.b // self.n

  def get_state(self) -> dict:
    return self._iter.get_state()

  def restore(self, state: dict | None, step: int) -> None:
    """Puts the iterator where a checkpoint at `step` left it."""
    if state is None:
      raise errors.WorkdirError(
          f'{self.stage}: the checkpoint at step {step} holds no data-iterator state, so '
          'this tfds run cannot resume on the same records (was it trained from the '
          "stream? config.data.pipeline must be what the run started with).")
    self._iter = iter(self._steps)
    self._iter.set_state(state)
    if self._iter.get_state().get('next_index') != step:
      raise errors.WorkdirError(
          f'{self.stage}: the checkpoint at step {step} saved a data iterator at record '
          f'group {state.get("next_index")}; the two must agree.')

  def for_step(self, step: int) -> dict:
    at = self._iter.get_state().get('next_index')
    if at != step:
      raise RuntimeError(f'TrainBatches: asked for step {step}, the iterator is at {at}.')
    epoch = self.epoch(step)
    if epoch != self._epoch:
      log.info('%s: epoch %d (of %d videos) at step %d', self.stage, epoch, self.n, step)
      self._epoch = epoch
    parts = [jax.make_array_from_process_local_data(self.sharding, p, self.global_shape)
             for p in next(self._iter)]
    if self._codes is not None:
      return self._gather(self._codes, parts[0])
    return dict(zip(('video', 'critic_video'), map(self._to_model, parts), strict=False))


def encode_split(config, split_source, ae_variables, mesh, encode) -> dict:
  """Codes `{'h_c': [N, Dc], 'h_p': [N, T, Dp]}` of every video of a split, in record
  order, replicated on `mesh`: `encode(ae_variables, videos) -> (h_c, h_p)` runs on
  batches of `config.batch_size` (the last one padded by repeating its final record)."""
  n, b = len(split_source), config.batch_size
  sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
  shape = (b, config.data.input_frames + config.data.target_frames, 64, 64,
           config.data.channels)
  rows = local_rows(sharding, shape)
  to_model = jax.jit(functools.partial(_to_model, image_size=config.data.image_size),
                     out_shardings=sharding)
  h_c, h_p = [], []
  for start in range(0, n, b):
    ids = [min(start + r, n - 1) for r in rows]
    local = np.stack([split_source[i]['video'] for i in ids])
    c, p = encode(ae_variables, to_model(jax.make_array_from_process_local_data(
        sharding, local, shape)))
    h_c.append(c)
    h_p.append(p)
  gather = jax.jit(lambda c, p: {'h_c': jnp.concatenate(c)[:n], 'h_p': jnp.concatenate(p)[:n]},
                   out_shardings=NamedSharding(mesh, P()))
  return gather(h_c, h_p)


class TfdsVideos(common.VideoSource):
  """A prepared dataset as a (host) `VideoSource`: what evaluation reads, from its
  splits. Frames are area-averaged to `image_size`; factors are as stored."""

  on_device = False

  def __init__(self, data_config):
    self.sources, info = open_prepared(data_config)
    shape = info.features['video'].shape
    self.num_frames, self.channels = shape[0], shape[-1]
    self.image_size = data_config.image_size
    self.content_factor_names = tuple(info.metadata['content_factor_names'])
    self.pose_factor_names = tuple(info.metadata['pose_factor_names'])
    self._groups = None
    self._warned = False
    if data_config.name == 'moving_dsprites':
      # The renderer of the same options knows its factor groups exactly (no files).
      from mipae_jax.data import dsprites
      frames = data_config.input_frames + data_config.target_frames
      self._groups = dsprites.MovingDSprites(
          num_frames=frames, image_size=data_config.image_size,
          channels=data_config.channels, num_objects=data_config.num_objects,
          rotation=data_config.rotation, split_seed=data_config.split_seed)

  def _read(self, split, indices):
    recs = [self.sources[split][int(i)] for i in indices]
    v = np.stack([r['video'] for r in recs]).astype(np.float32) / 255.0
    v = common.area_downsample(v, self.image_size, np)
    return v, {'content': np.stack([r['content'] for r in recs]),
               'pose': np.stack([r['pose'] for r in recs])}

  def sample_batch(self, key, batch_size: int, split: str = 'train'):
    self._check_split(split)
    rng = common.host_rng(key)
    return self._read(split, rng.integers(0, len(self.sources[split]), batch_size))

  def test_videos(self, seed: int, n: int):
    """`n` distinct test-split videos chosen by `seed` (all of them, in order, if
    `n` is the split's size or more)."""
    m = len(self.sources['test'])
    idx = (np.arange(m) if n >= m else
           np.sort(common.host_rng(seed).choice(m, n, replace=False)))
    return self._read('test', idx)

  def sample_static(self, key_or_seed, n: int, split: str = 'test'):
    """`n` frames, each of a random video and time of the split (read one at a time:
    only the chosen frames are converted)."""
    self._check_split(split)
    distinct = len(self.sources[split]) * self.num_frames
    if n > distinct // 10 and not self._warned:
      # Frames drawn with replacement from few: the probe's train and test frames then
      # overlap and its held-out MI estimates are optimistic.
      log.warning('the %s split holds %d frames (%d videos x %d); drawing %d for the MIG '
                  'repeats many of them, which makes the probe estimates optimistic. '
                  'Prepare more test videos (--test_videos) or lower eval.mig_samples.',
                  split, distinct, len(self.sources[split]), self.num_frames, n)
      self._warned = True
    rng = common.host_rng(key_or_seed)
    vids = rng.integers(0, len(self.sources[split]), n)
    times = rng.integers(0, self.num_frames, n)
    recs = [self.sources[split][int(i)] for i in vids]
    images = np.stack([r['video'][t] for r, t in zip(recs, times, strict=True)])
    images = common.area_downsample(images.astype(np.float32) / 255.0, self.image_size, np)
    content = np.stack([r['content'][t] for r, t in zip(recs, times, strict=True)])
    pose = np.stack([r['pose'][t] for r, t in zip(recs, times, strict=True)])
    return images, content.astype(np.int32), pose.astype(np.int32)

  def factor_groups(self, split: str = 'test'):
    return None if self._groups is None else self._groups.factor_groups(split)
