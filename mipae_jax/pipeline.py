"""The whole run: autoencoder, then pose LSTM, then evaluation, each resumable.

`train_and_evaluate(config, workdir)` is what `mipae-train` calls; the
stage functions are importable on their own (a notebook can run one stage). This module
wires each stage (its networks' step, initial state and batches); `stages.run_stage` runs
it and `batches` serves its data.

Resumption is exact: a stage's state holds its step; the data for step s is drawn from
`fold_in(data_key, s)` and the step's own randomness from `fold_in(step_key, s)`, so a
run stopped and resumed at any checkpoint produces the same parameters as one that
never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import time

import jax

from mipae_jax import (
  checkpoint,
  config_record,
  configuration,
  data,
  distributed,
  errors,
  parallel,
  runs,
  train,
)
from mipae_jax import workdir as workdir_lib
from mipae_jax.batches import (
  POOL_STREAM,
  KeyedBatches,
  encode_code_pool,
  make_code_batch_fn,
  replicate_on_mesh,
  stage_batches,
)
from mipae_jax.stages import StageResult, run_stage

log = logging.getLogger(__name__)


def root_keys(config):
  """Named key streams of a run, all derived from `config.seed`."""
  root = jax.random.key(config.seed)
  names = ('ae_init', 'ae_data', 'ae_step', 'lstm_init', 'lstm_data', 'lstm_step')
  return dict(zip(names, jax.random.split(root, len(names)), strict=True))


def train_autoencoder(config, workdir: str, source=None, mesh=None) -> StageResult:
  """Stage 1: MIPAE (or DRNET/SMILE) autoencoder with its critic."""
  keys = root_keys(config)
  mesh = parallel.local_mesh() if mesh is None else mesh
  source = data.make_source(config.data) if source is None else source
  step_fn = parallel.make_train_step(config, 'ae', 'shard_map', mesh)
  init = train.create_train_state(config, keys['ae_init'])
  batches = stage_batches(config, source, mesh, 'ae', config.train.ae_steps,
                          keys['ae_data'])
  return run_stage(config, workdir, 'ae', init, step_fn, batches, keys['ae_step'],
                   config.train.ae_steps, mesh)


def train_lstm(config, workdir: str, ae_state: train.AEState | None = None, source=None,
               mesh=None) -> StageResult:
  """Stage 2: the pose LSTM on the frozen autoencoder of the same workdir.

  With `config.lstm.code_pool = N > 0` the stage first encodes N streamed videos and
  trains on their codes (`encode_code_pool`): each iteration then runs no encoder. A
  `pipeline='tfds'` run always does so, with the whole train split as the pool, read in
  the order the video path would read it (`tfds_source.encode_split`).
  """
  keys = root_keys(config)
  mesh = parallel.local_mesh() if mesh is None else mesh
  source = data.make_source(config.data) if source is None else source
  if ae_state is None:
    ae_state = runs.restore_autoencoder(config, workdir)
  ae_variables = replicate_on_mesh(train.autoencoder_variables(ae_state), mesh)
  init = train.create_lstm_state(config, keys['lstm_init'])
  if config.data.pipeline == 'tfds':
    # A fixed dataset: encode its train split once and train on the codes, in the order
    # the video path would read the videos.
    from mipae_jax.data import tfds_source
    t0 = time.perf_counter()
    codes = tfds_source.encode_split(config, source.sources['train'], ae_variables, mesh,
                                     jax.jit(train.lstm_encoder(config)))
    jax.block_until_ready(codes)
    log.info('lstm: encoded the %d train videos in %.1f s; training on their codes',
             codes['h_c'].shape[0], time.perf_counter() - t0)
    step_fn = parallel.make_train_step(config, 'lstm_codes', 'shard_map', mesh)
    batches = tfds_source.TrainBatches(config, source.sources['train'], mesh, 'lstm',
                                       config.train.lstm_steps, codes=codes)
  elif config.lstm.code_pool:
    t0 = time.perf_counter()
    codes = encode_code_pool(config, source, ae_variables, mesh,
                             jax.random.fold_in(keys['lstm_data'], POOL_STREAM))
    jax.block_until_ready(codes)
    log.info('lstm: encoded a pool of %d videos in %.1f s; training on their codes',
             config.lstm.code_pool, time.perf_counter() - t0)
    step_fn = parallel.make_train_step(config, 'lstm_codes', 'shard_map', mesh)
    batches = KeyedBatches(make_code_batch_fn(config, codes, mesh), keys['lstm_data'])
  else:
    # The step encodes each batch with the frozen autoencoder, passed as an argument.
    video_step = parallel.make_train_step(config, 'lstm', 'shard_map', mesh)
    step_fn = lambda state, batch, key: video_step(state, ae_variables, batch, key)
    batches = stage_batches(config, source, mesh, 'lstm', config.train.lstm_steps,
                            keys['lstm_data'])
  return run_stage(config, workdir, 'lstm', init, step_fn, batches, keys['lstm_step'],
                   config.train.lstm_steps, mesh, trained_on=runs.autoencoder_record(ae_state))


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) every stage in `workdir`; returns the evaluation metrics.

  Refused before any compute: a bad config field (ConfigError), an unusable workdir or
  one another run holds (WorkdirError), a workdir made with another config
  (ConfigMismatchError), data the config cannot read (DataError, DataNotFoundError).
  The config is recorded only once all of these have passed, so a refused first run
  leaves no record that would refuse the corrected command as "another config".
  """
  configuration.validate(config, num_devices=jax.device_count())
  with contextlib.ExitStack() as held:
    if distributed.is_chief():
      workdir_lib.prepare(workdir)
      held.enter_context(workdir_lib.RunLock(workdir))
      config_record.check_config(workdir, config)
      check_steps_not_lowered(workdir, config)
    source = data.make_source(config.data)
    if distributed.is_chief():
      if config.data.pipeline == 'tfds':
        config_record.check_dataset_record(workdir, config)
      config_record.record_config(workdir, config)
    return _train_and_evaluate(config, workdir, source)


def check_steps_not_lowered(workdir: str, config) -> None:
  """Refuses (ConfigError) a step count below the step a stage's checkpoint has reached:
  the run would evaluate the longer-trained networks under a record saying fewer steps."""
  for stage, field, name in (('ae', 'ae_steps', 'autoencoder'), ('lstm', 'lstm_steps', 'LSTM')):
    store = checkpoint.CheckpointStore(workdir, stage, enabled=False)
    try:
      reached = store.latest_step()
    finally:
      store.close()
    requested = config.train[field]
    if reached is not None and requested < reached:
      raise errors.ConfigError(
          f'config.train.{field}={requested} is below step {reached}, which this run\'s '
          f'{name} has reached ({store.directory}): a run cannot be shortened. Pass '
          f'--config.train.{field}={reached} (or more) to resume or re-evaluate it, or use '
          'a new --workdir for a shorter run.')


def _train_and_evaluate(config, workdir: str, source) -> dict:
  from mipae_jax import evaluate  # Heavy plotting imports only when evaluating.

  mesh = parallel.local_mesh()
  timings = {}
  ae = train_autoencoder(config, workdir, source, mesh)
  timings['ae'] = _timing(ae)
  lstm_state = None
  if config.train.lstm_steps > 0:
    lstm = train_lstm(config, workdir, ae.state, source, mesh)
    lstm_state, timings['lstm'] = lstm.state, _timing(lstm)
  if not distributed.is_chief():
    return {}
  return evaluate.evaluate(config, workdir, ae.state, lstm_state, source=source,
                           timings=timings)


def _timing(result: StageResult) -> dict:
  rate = result.steps_run / result.seconds if result.seconds > 0 and result.steps_run else 0.0
  return {'steps': result.step, 'steps_this_run': result.steps_run,
          'seconds': round(result.seconds, 2), 'steps_per_second': round(rate, 3)}
