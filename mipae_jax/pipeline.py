"""The whole run: autoencoder, then pose LSTM, then evaluation, each resumable.

`train_and_evaluate(config, workdir)` is what `mipae-train` calls; the
stage functions are importable on their own (a notebook can run one stage).

Resumption is exact: a stage's state holds its step; the data for step s is drawn from
`fold_in(data_key, s)` and the step's own randomness from `fold_in(step_key, s)`, so a
run stopped and resumed at any checkpoint produces the same parameters as one that
never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mipae_jax import (
  checkpoint,
  config_record,
  configuration,
  data,
  distributed,
  errors,
  parallel,
  profiling,
  runs,
  train,
)
from mipae_jax import workdir as workdir_lib
from mipae_jax.logger import (
  METRICS_FILE,
  UNREADABLE_SUFFIX,
  ZERO_FROM,
  MetricLogger,
  ProgressBar,
  check_finite,
  drop_records_after,
  zero_gradient_cause,
)

log = logging.getLogger(__name__)

DATA_ITERATOR = 'data_iterator'  # Checkpoint metadata key of a batch source's state.


@dataclasses.dataclass
class StageResult:
  state: object
  step: int
  seconds: float
  steps_run: int


def root_keys(config):
  """Named key streams of a run, all derived from `config.seed`."""
  root = jax.random.key(config.seed)
  names = ('ae_init', 'ae_data', 'ae_step', 'lstm_init', 'lstm_data', 'lstm_step')
  return dict(zip(names, jax.random.split(root, len(names)), strict=True))


def replicate_on_mesh(tree, mesh):
  """Copies every leaf of `tree` to all devices of `mesh` (global, replicated).

  Single process: a plain `device_put`. Several processes: a fresh state sits on one
  local device, and `device_put` cannot move it to other hosts' devices; every process
  holds the same values (same seed), so each fills its own devices from a host copy.
  """
  return _place_from_host(tree, NamedSharding(mesh, P()))


def _place_from_host(tree, sharding):
  """Every leaf of `tree` (the same values on every process) as a global array with
  `sharding`: one process puts it directly; several each fill only their own devices
  from a host copy (`device_put` cannot reach other hosts' devices)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x  # Already there (a restored or trained state).
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


@dataclasses.dataclass
class KeyedBatches:
  """The batches of a stream: step s's batch is `sample(fold_in(key, s))`, a pure function
  of the step, so resuming needs no state. One of the two batch sources `run_stage`
  takes, with `data.tfds_source.TrainBatches` (a reader whose position every checkpoint
  holds); both answer `for_step`, `get_state`, `restore` and `epoch`."""
  sample: Callable[[jax.Array], Any]  # `key -> global batch`.
  key: jax.Array

  def for_step(self, step: int):
    return self.sample(jax.random.fold_in(self.key, step))

  def get_state(self) -> None:
    return None  # Nothing to save: the step number is the position.

  def restore(self, state, step: int) -> None:
    del state, step

  def epoch(self, step: int) -> None:
    del step
    return None  # A stream has no epochs.


def stage_batches(config, source, mesh, stage: str, num_steps: int, key):
  """The batches of a stage: the stream's (`make_batch_fn` folded with `key`), or a
  `TrainBatches` reader of the prepared train split for `config.data.pipeline='tfds'`."""
  if config.data.pipeline == 'tfds':
    from mipae_jax.data import tfds_source
    return tfds_source.TrainBatches(config, source.sources['train'], mesh, stage, num_steps)
  return KeyedBatches(make_batch_fn(config, source, mesh, stage), key)


def make_batch_fn(config, source, mesh, stage: str):
  """`batch(key) -> {'video', 'critic_video'?}` global batch split over `mesh`.

  On-device sources sample inside one jitted program whose output is already laid
  out over the devices; host sources (MPI3D) sample with numpy and are then placed.
  The autoencoder stage draws two batches per iteration (the model step uses a new one,
  docs/method.md section 2); the LSTM stage one.

  Several processes: every process draws the same global batch from the same key
  and keeps the rows of its own devices (on device, the jitted sampler computes only
  the shards this process holds; on the host, `make_array_from_callback` picks them),
  so the processes never exchange data and together hold exactly the batch one
  process would draw.
  """
  b = config.batch_size
  sharding = NamedSharding(mesh, P(parallel.AXIS))

  def sample(key):
    if stage == 'lstm':
      return {'video': source.sample_batch(key, b, 'train')[0]}
    k_model, k_critic = jax.random.split(key)
    return {'video': source.sample_batch(k_model, b, 'train')[0],
            'critic_video': source.sample_batch(k_critic, b, 'train')[0]}

  if source.on_device:
    return jax.jit(sample, out_shardings=sharding)
  return lambda key: _place_from_host(sample(key), sharding)


def _host_metrics(metrics):
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _set_aside(store, reason: str):
  """Moves a stage's checkpoints to `<dir>.stale-<n>` (nothing is deleted) and returns a
  fresh store of the same stage."""
  store.close()
  n = 1
  while os.path.exists(f'{store.directory}.stale-{n}'):
    n += 1
  aside = f'{store.directory}.stale-{n}'
  if distributed.is_chief():
    os.replace(store.directory, aside)
  if jax.process_count() > 1:  # No process opens the fresh store before the move.
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f'set aside {store.directory}')
  log.warning('%s: %s; retraining the stage from scratch (its old checkpoints are kept in '
              '%s).', store.stage, reason, aside)
  return checkpoint.CheckpointStore(store.workdir, store.stage, keep=store.keep,
                                    enabled=store.enabled)


class _ZeroGradients:
  """Tracks, on device and without a sync per step, whether every `*grad_norm` metric
  was exactly 0 at every step of the current log interval.

  `check` (at each log step) warns once per stage for each set of norms found zero over
  a whole interval: a dead network repeats the same set at every interval, which gives
  one warning naming the likely cause (`logger.zero_gradient_cause`), the others being
  counted. It returns `{<norm>_zero_from: first step of the interval}` for the interval's
  metrics.jsonl record, from which evaluation flags the stage (`logger.zero_gradient_flags`).
  """

  def __init__(self):
    self.peak = None
    self.first = None
    self.moved = set()  # Norms that were above 0 in some interval of this run.
    self.warned = set()  # The sets of zero norms already warned about.
    self.unlogged = 0  # Zero intervals not warned about (their set was).

  def update(self, step: int, metrics) -> None:
    norms = {k: v for k, v in metrics.items() if k.endswith('grad_norm')}
    if not norms:
      return
    if self.peak is None:
      self.peak, self.first = norms, step
    else:
      self.peak = jax.tree.map(jax.numpy.maximum, self.peak, norms)

  def check(self, stage: str, step: int) -> dict:
    if self.peak is None:
      return {}
    peak, first = _host_metrics(self.peak), self.first
    self.peak = self.first = None
    zero = sorted(k for k, v in peak.items() if v == 0.0)
    trained_before = bool(self.moved.intersection(zero))
    self.moved.update(k for k, v in peak.items() if v != 0.0)
    if not zero:
      return {}
    if frozenset(zero) in self.warned:
      self.unlogged += 1
    else:
      self.warned.add(frozenset(zero))
      later = (' Later intervals like this one are counted, not logged; the evaluation '
               'report flags the stage.' if trained_before else '')
      log.warning('%s: %s exactly 0 at every step from %d to %d: %s.%s', stage,
                  ', '.join(zero) + (' was' if len(zero) == 1 else ' were'), first, step,
                  zero_gradient_cause(stage, trained_before), later)
    return {f'{k}{ZERO_FROM}': first for k in zero}

  def summary(self, stage: str) -> None:
    if self.unlogged:
      log.info('%s: %d more log interval(s) with the same gradient norms at 0 (not logged '
               'one by one).', stage, self.unlogged)


def close_all(*resources) -> None:
  """Closes each of `resources`, all of them even if one fails. While an exception is
  already on its way out (a failed save on a full disk), an error closing (the same full
  disk failing the TensorBoard writer's flush) is logged, not raised: it would replace
  the error that says what happened and what is kept. Otherwise the first one is raised."""
  pending = sys.exc_info()[1]
  first = None
  for r in resources:
    try:
      r.close()
    except Exception as e:  # noqa: BLE001 - re-raised below unless another is pending.
      if pending is not None:
        log.warning('closing %s failed too: %s', type(r).__name__, errors.describe(e))
      first = first or e
  if first is not None and pending is None:
    raise first


def run_stage(config, workdir: str, stage: str, init_state, step_fn, batches, step_key,
              num_steps: int, mesh, trained_on: dict | None = None) -> StageResult:
  """The loop shared by both stages: restore, step, log, check, save.

  Args:
    init_state: a fresh state (used when the workdir has no checkpoint of `stage`).
    step_fn: the jitted data-parallel step, `step_fn(state, batch, key) -> (state,
      metrics)`.
    batches: the stage's batch source: `for_step(step)` gives the global batch of a
      step, `get_state()` what a checkpoint keeps of its position (None: nothing),
      `restore(state, step)` puts it back, `epoch(step)` the pass over the data (None: a
      stream). `KeyedBatches` and `data.tfds_source.TrainBatches` are the two.
    step_key: the root key each step folds its step number into.
    trained_on: recorded in every checkpoint (the LSTM stage: `autoencoder_record`); a
      checkpoint recording another value is set aside and the stage starts afresh.
  """
  tc = config.train
  several = jax.process_count() > 1
  # Every process opens the store and takes part in each save and restore.
  store = checkpoint.CheckpointStore(workdir, stage, keep=tc.keep_checkpoints)
  state, start = init_state, 0
  if store.latest_step() is not None:
    # Read straight into the mesh's replicated sharding (each process its own devices),
    # as the data-parallel step expects.
    replicated = NamedSharding(mesh, P())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(lambda: init_state))
    restored, meta, restored_step = store.restore(abstract)
    reason = runs.stale_reason(meta, trained_on) if trained_on is not None else None
    if reason is None:
      state, start = restored, restored_step
      batches.restore(meta.get(DATA_ITERATOR), start)
      log.info('%s: resumed from step %d in %s', stage, start, store.directory)
    else:
      store = _set_aside(store, reason)
  distributed.agree_on_start(stage, start, store.directory)
  if state is init_state:  # A fresh state: replicated over the mesh like a restored one.
    state = replicate_on_mesh(state, mesh)
  if distributed.is_chief():
    dropped = drop_records_after(workdir, stage, start)
    if dropped.redone:
      log.info('%s: dropped %d record(s) of metrics.jsonl past step %d, which this run '
               'redoes.', stage, dropped.redone, start)
    if dropped.partial:
      log.info('%s: dropped the last line of metrics.jsonl, cut off mid-write by the run '
               'that stopped.', stage)
    if dropped.set_aside:
      log.warning('%s: moved %d line(s) of metrics.jsonl that are not JSON records to '
                  '%s%s.', stage, dropped.set_aside, METRICS_FILE, UNREADABLE_SUFFIX)
  metric_logger = MetricLogger(workdir, enabled=distributed.is_chief(), stage=stage)
  # The first step of a run compiles; the profile window starts after it.
  profiler = profiling.StepProfiler(os.path.join(workdir, 'profile', stage), start + 1,
                                    tc.profile_steps, enabled=distributed.is_chief())
  extra_metadata = {} if trained_on is None else {'trained_on': trained_on}
  t0, step = time.time(), start
  saved = start if start > 0 else None
  zero_grads = _ZeroGradients()
  last_metrics, shown = {}, start
  try:
    with (distributed.stop_requests() as stop, ProgressBar(num_steps, start, desc=stage) as bar,
          distributed.peer_failures(stage, lambda: step, store)):
      while step < num_steps:
        profiler.before_step(step)
        batch = batches.for_step(step)
        t_call = time.perf_counter()
        state, metrics = step_fn(state, batch, step_key)
        step += 1
        if step == start + 1:
          # jit compiles within the first call, which returns once the step is
          # dispatched: the call's time is the compile time.
          bar.compiled(time.perf_counter() - t_call, step)
        zero_grads.update(step, metrics)
        profiler.after_step(step, metrics)
        # Read the flag once: a signal landing later in this iteration must not skip
        # the save and still stop (it is handled at the next step boundary).
        stopping, signum = stop['stop'], stop['signum']
        at_log = step % tc.log_every == 0 or step == num_steps
        if several:
          # A save takes every process, so they stop together: at each log step they
          # agree whether any of them was signalled, and then all save and stop.
          stopping, signum = (distributed.agree_on_stop(stopping, signum) if at_log
                              else (None, None))
        at_ckpt = step % tc.ckpt_every == 0 or step == num_steps or stopping
        if at_log or at_ckpt:
          # Fetch (and check) before saving, so a diverged state is never written.
          last_metrics = _host_metrics(metrics)
          check_finite(step, last_metrics, stage, checkpoint_dir=store.directory,
                       saved_step=saved)
          epoch = batches.epoch(step - 1)
          if epoch is not None:
            last_metrics['epoch'] = epoch
          # A log interval whose gradient norms were all exactly 0 is recorded with them.
          zero = zero_grads.check(stage, step) if at_log else {}
          metric_logger.write_scalars(step, {**last_metrics, **zero})
        if at_log:
          # Only at log steps: off a terminal each update is a line of the job's log.
          bar.update(step - shown, last_metrics)
          shown = step
        if at_ckpt:
          position = batches.get_state()
          store.save(step, state, metadata={
              'metrics': last_metrics, **extra_metadata,
              **({} if position is None else {DATA_ITERATOR: position})})
          saved = step
        if stopping:
          raise distributed.Preempted(
              f'{stopping} received: saved the {stage} stage at step {step} in '
              f'{store.directory}. Run the same command again to resume.', signum)
    zero_grads.summary(stage)
  finally:
    close_all(profiler, metric_logger, store)
  return StageResult(state, step, time.time() - t0, step - start)


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


# fold_in index of the code pool's key in the LSTM data stream (steps use 0, 1, ...).
_POOL_STREAM = 2 ** 32 - 1


def encode_code_pool(config, source, ae_variables, mesh, key) -> dict:
  """`config.lstm.code_pool` videos drawn from `source` (batch by batch, batch i from
  `fold_in(key, i)`) and encoded once with the frozen autoencoder:
  `{'h_c': [N, Dc], 'h_p': [N, T, Dp]}`, replicated on `mesh`.

  A video's codes are a pure function of the video (inference-mode encoders), so the
  LSTM trained on them is the LSTM trained on these videos; only the per-iteration
  encoder passes go.
  """
  n, b = config.lstm.code_pool, config.batch_size
  videos = make_batch_fn(config, source, mesh, 'lstm')
  encode = jax.jit(train.lstm_encoder(config))
  h_c, h_p = [], []
  for i in range(-(-n // b)):
    c, p = encode(ae_variables, videos(jax.random.fold_in(key, i))['video'])
    h_c.append(c)
    h_p.append(p)
  replicated = NamedSharding(mesh, P())
  gather = jax.jit(lambda c, p: {'h_c': jnp.concatenate(c)[:n], 'h_p': jnp.concatenate(p)[:n]},
                   out_shardings=replicated)
  return gather(h_c, h_p)


def make_code_batch_fn(config, codes: dict, mesh):
  """`batch(key) -> {'h_c', 'h_p'}`: `config.batch_size` pool entries drawn uniformly
  (with replacement) by `key`, split over `mesh` like a video batch."""
  n = codes['h_c'].shape[0]
  pick = jax.jit(
      lambda codes, key: jax.tree.map(
          lambda x: x[jax.random.randint(key, (config.batch_size,), 0, n)], codes),
      out_shardings=NamedSharding(mesh, P(parallel.AXIS)))
  return functools.partial(pick, codes)


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
                             jax.random.fold_in(keys['lstm_data'], _POOL_STREAM))
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
