"""The stage loop both stages share: restore, step, log, check, save, stop.

`run_stage` resumes a stage from its newest confirmed checkpoint (or sets aside one made
for another autoencoder), then steps until the stage's step count, logging metrics,
refusing a non-finite step before it is saved, warning of gradients stuck at 0, saving
every `train.ckpt_every` steps, and saving and stopping at a stop signal (with every
process of a multi-process run at the same step).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mipae_jax import batches as batches_lib
from mipae_jax import checkpoint, distributed, errors, profiling, runs
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
  """A stage's end: its state and step, this call's wall seconds and steps run."""
  state: object
  step: int
  seconds: float
  steps_run: int


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
    state = batches_lib.replicate_on_mesh(state, mesh)
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
