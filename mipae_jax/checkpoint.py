"""Checkpoints of the training stages.

Layout of a workdir:

  workdir/checkpoints/<stage>/<step>/ one Orbax step: items 'state' (the stage pytree)
                                      and 'metadata' (JSON: step, wall time, a digest
                                      of the state, and whatever the caller passes)
  workdir/checkpoints/<stage>/LAST_GOOD  the newest step whose save was confirmed

Orbax's `CheckpointManager` does the writing: atomic commits, retention (`keep`) and
several processes. This module adds what only this project needs: LAST_GOOD, the digest
check, the fallback past a damaged step, and messages that say what to do.

Several processes: every process takes part in each save and each restore of a training
store, as Orbax expects of global arrays. Each hands Orbax its own devices' shards; a
replicated array is written once, by the process holding its replica 0 (process 0), the
primary process writes the metadata and commits the step, and a restore reads straight
into the target's sharding (the mesh's replicated one in training: every process fills
its own devices from the files, with no copy through process 0). LAST_GOOD is written by
the primary process. A store opened with `enabled=False` (evaluation, tools) only reads,
by this process alone.

Why a saved step is never restored half-written:
  * Orbax (0.12.8, local/POSIX paths: `AtomicRenameTemporaryPath`) writes a step into
    `<step>.orbax-checkpoint-tmp`, writes `commit_success.txt` into it once every item
    is written, and only then renames it to `<step>`. A process killed before the
    rename leaves only the tmp directory, which Orbax's step listing skips (name does
    not match `^\\d+$`) and `cleanup_tmp_directories` deletes when the next store opens.
  * On top of that the store lists only step directories holding `commit_success.txt`,
    writes `LAST_GOOD` (tmp file + `os.replace`) after a save is confirmed, and
    prefers it on restore; steps newer than `LAST_GOOD` are treated as unconfirmed.
  * Every restore is checked against the abstract target (tree structure, shapes,
    dtypes) and against the digest stored at save time, so a truncated or garbled
    file fails loudly and `restore()` falls back to the previous good step.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import type_handlers

from mipae_jax import errors
from mipae_jax.workdir import atomic_write_text

logger = logging.getLogger(__name__)

STAGES = ('ae', 'lstm')
LAST_GOOD = 'LAST_GOOD'
_COMMIT_FILE = 'commit_success.txt'  # Orbax's commit marker (both atomicity modes).
# Keys the store itself puts in the metadata item.
_RESERVED_METADATA = ('step', 'wall_time', 'stage', 'state_digest')


def _type_handlers():
  """Orbax's standard type handlers, except that a replicated jax.Array is written whole
  by the process holding its replica 0. Orbax's default (replica-parallel) splits it into
  one slice per process, which pays on large arrays over many hosts; these states are
  megabytes, and one writer keeps a step's data in one process's files."""
  scalar = type_handlers.ScalarHandler()
  return type_handlers.create_type_handler_registry(
      (int, scalar), (float, scalar), (bytes, scalar), (np.number, scalar),
      (np.ndarray, type_handlers.NumpyHandler()),
      (jax.Array, type_handlers.ArrayHandler(use_replica_parallel=False)),
      (str, type_handlers.StringHandler()),
  )


class CheckpointError(errors.RunFailure):
  """A checkpoint could not be written or no usable checkpoint could be restored."""


class LayoutMismatchError(errors.UserError, ValueError):
  """A checkpoint holds other parameters than the model restoring it (written by another
  version of mipae_jax or for another `config.model`); its files are intact."""


class MissingFilesError(errors.UserError, FileNotFoundError):
  """Files of a checkpoint were deleted or moved after it was saved."""


# What a saved state directory holds besides its data files: their index and tree.
_STATE_INDEX = ('_METADATA', 'manifest.ocdbt')


def _missing_files(state_dir: str, error: BaseException) -> str | None:
  """Which files of the saved state at `state_dir` are gone, given the error restoring
  it; None when none is (the failure is something else)."""
  gone = [n for n in _STATE_INDEX if not os.path.exists(os.path.join(state_dir, n))]
  if 'NOT_FOUND' in errors.describe(error, limit=2000):
    # TensorStore could not open a data file that the index names.
    data_dirs = ['d'] + [n for n in sorted(os.listdir(state_dir)) if n.startswith('ocdbt.')]
    gone += [f'{n}/' for n in data_dirs if not os.path.isdir(os.path.join(state_dir, n))]
    gone = gone or ['data files its index names']
  return ', '.join(gone) or None


# ------------------------------------------------------------------------ Helpers.


def _local_copy(x) -> np.ndarray:
  """A host copy of `x` read from this process's devices only: a global array spanning
  several processes must be replicated, and its local replica is the whole value."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError(f'a {_describe_leaf(x)} array sharded over several processes '
                       'has no local copy; the checkpoint digest needs replicated arrays')
    x = x.addressable_data(0)
  return np.asarray(jax.device_get(x))


def _host_tree(tree):
  """The pytree with every leaf copied to a host numpy array (same structure), each
  process reading its own devices."""
  return jax.tree.map(_local_copy, tree)


def tree_digest(host_tree) -> str:
  """SHA-256 over the leaves' dtypes, shapes and bytes, in tree order.

  Catches what Orbax itself may not: a file that decodes but holds other values.
  """
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(host_tree):
    a = np.ascontiguousarray(leaf)
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def state_digest(tree) -> str:
  """`tree_digest` of a pytree of (device) arrays, copied to the host first."""
  return tree_digest(_host_tree(tree))


def _describe_leaf(x) -> str:
  return f'{np.dtype(x.dtype).name}{tuple(x.shape)}'


def _check_against_target(restored, abstract_state) -> None:
  """Raises ValueError if `restored` differs from the target in structure, shape or
  dtype (Orbax can pad/truncate or partially restore in some modes: never accept it)."""
  want, got = jax.tree.structure(abstract_state), jax.tree.structure(restored)
  if want != got:
    raise ValueError(f'restored tree structure {got} differs from the target {want}')
  paths = jax.tree_util.tree_leaves_with_path(abstract_state)
  for (path, a), b in zip(paths, jax.tree.leaves(restored), strict=True):
    if tuple(a.shape) != tuple(b.shape) or np.dtype(a.dtype) != np.dtype(b.dtype):
      raise ValueError(f'leaf {jax.tree_util.keystr(path)}: restored '
                       f'{_describe_leaf(b)}, target {_describe_leaf(a)}')


def _leaf_names(tree) -> set[str]:
  """Dotted leaf paths of a pytree, attribute and dict keys alike
  (`model.params.decoder.upc1_conv.kernel`)."""
  return {jax.tree_util.keystr(path, simple=True, separator='.')
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _layout_difference(state_dir: str, abstract_state) -> str | None:
  """Which parameter and BatchNorm-statistics leaves the checkpoint at `state_dir` lacks
  or has beyond `abstract_state`; None if they agree or the checkpoint's own metadata is
  unreadable (then the failure is something else)."""
  try:
    meta = ocp.StandardCheckpointer().metadata(state_dir)
    tree = getattr(meta, 'item_metadata', meta)
    disk = _leaf_names(getattr(tree, 'tree', tree))
  except Exception:  # pylint: disable=broad-except
    return None
  weights = lambda names: {n for n in names
                           if 'params' in n.split('.') or n.startswith('batch_stats.')}
  want = weights(_leaf_names(abstract_state))
  missing, extra = sorted(want - weights(disk)), sorted(weights(disk) - want)
  if not (missing or extra):
    return None

  def some(names):
    more = f' (+{len(names) - 4} more)' if len(names) > 4 else ''
    return (', '.join(names[:4]) + more) if names else 'none'

  return f'missing from the checkpoint: {some(missing)}; not in this model: {some(extra)}'


def _with_default_sharding(abstract_state):
  """Target leaves without a sharding are restored to the local default device."""
  device = jax.local_devices()[0]

  def fix(x):
    if getattr(x, 'sharding', None) is not None:
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=jax.sharding.SingleDeviceSharding(device))

  return jax.tree.map(fix, abstract_state)


def _errno_of(err: BaseException) -> int | None:
  """The OS error number behind `err`: an OSError in its chain, or the code that
  TensorStore writes into its messages (`os_error_code='28'`)."""
  e = err
  while e is not None:
    if isinstance(e, OSError) and e.errno is not None:
      return e.errno
    m = re.search(r"os_error_code='?(\d+)", str(e))
    if m:
      return int(m.group(1))
    e = e.__cause__ or e.__context__
  return None


# ------------------------------------------------------------------ The store.


class _ReaderNotice(logging.Filter):
  """Drops Orbax's warning that a manager opened read-only is read-only (it is logged at
  WARNING on every restore for reading, and says only what the reader asked for)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Given directory is read only=')


logging.getLogger('absl').addFilter(_ReaderNotice())


class CheckpointStore:
  """Checkpoints of one training stage in `workdir/checkpoints/<stage>`.

  One args-based Orbax `CheckpointManager` keeps the newest `keep` steps; each step
  holds the stage state (one pytree, e.g. `AEState`) and a JSON metadata item.

  Several processes: every process opens the store and calls `save` and `restore`
  with the same steps (see the module docstring). `enabled=False` opens it for reading
  by this process alone: `save` does nothing, and `restore` never waits on the others.

  Example:
    store = CheckpointStore(workdir, 'ae', keep=config.train.keep_checkpoints)
    abstract = jax.eval_shape(functools.partial(create_train_state, config), key)
    if store.latest_step() is not None:
      state, meta, step = store.restore(abstract)
    ...
    store.save(step, state, {'data_iterator': it_state})
  """

  def __init__(self, workdir: str, stage: str, keep: int = 3, enabled: bool = True):
    if stage not in STAGES:
      raise ValueError(f'stage must be one of {STAGES}, got {stage!r}')
    if keep < 1:
      raise ValueError(f'keep must be >= 1, got {keep}')
    # Orbax takes absolute paths only; relative workdirs (e.g. `--workdir=runs/x`) are common.
    self.workdir = os.path.abspath(os.fspath(workdir))
    self.stage = stage
    self.keep = keep
    self.enabled = enabled
    # The process that writes LAST_GOOD and Orbax's metadata (Orbax's primary host).
    self.primary = jax.process_index() == 0 or not enabled
    self.directory = os.path.join(self.workdir, 'checkpoints', stage)
    self._pending_step = None  # Async save whose LAST_GOOD is not yet written.
    self._manager = None
    if enabled and self.primary:
      try:
        os.makedirs(self.directory, exist_ok=True)
      except OSError as e:
        raise CheckpointError(self._write_help(
            f'cannot create the checkpoint directory {self.directory}', e)) from e
      self._remove_stale_marker_files()
    self._ensure_manager()

  def _remove_stale_marker_files(self) -> None:
    """A process killed while writing LAST_GOOD leaves `LAST_GOOD.tmp-<pid>`; the
    marker itself is intact (it is replaced atomically), so the leftover is junk."""
    for name in os.listdir(self.directory):
      if name.startswith(f'{LAST_GOOD}.tmp-'):
        try:
          os.remove(os.path.join(self.directory, name))
        except OSError:
          pass  # Another process's cleanup got there first.

  def _ensure_manager(self) -> bool:
    """Opens the manager: a writer at once (every process; Orbax creates the directory
    on the primary one and waits for it), a reader once the directory exists (it may
    start before the writing process has created it). Returns whether there is one."""
    if self._manager is None and (self.enabled or os.path.isdir(self.directory)):
      self._manager = self._make_manager()
    return self._manager is not None

  def _make_manager(self) -> ocp.CheckpointManager:
    if self.enabled:  # Every process takes part, process 0 the primary (Orbax's default).
      processes = ocp.options.MultiprocessingOptions()
    else:  # This process alone: a reader never waits on a barrier the others skip.
      me = jax.process_index()
      processes = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    options = ocp.CheckpointManagerOptions(
        # A reader keeps and saves nothing; saying so here spares Orbax's warnings that
        # it changed these settings for a read-only manager.
        max_to_keep=self.keep if self.enabled else None,
        save_interval_steps=1 if self.enabled else 0,
        create=self.enabled,
        read_only=not self.enabled,
        # A killed save leaves `<step>.orbax-checkpoint-tmp`; remove it on open.
        cleanup_tmp_directories=self.enabled,
        multiprocessing_options=processes,
        # Several processes: saves run in the calling thread, where Orbax's barriers are
        # device collectives that fail at once when a peer dies (PeerLost); a background
        # thread's barrier would wait for the heartbeat timeout, and JAX would then abort
        # the process. (`save(wait=False)` then returns once the step is written.)
        enable_async_checkpointing=jax.process_count() == 1,
    )
    handlers = {
        'state': ocp.PyTreeCheckpointHandler(type_handler_registry=_type_handlers(),
                                             multiprocessing_options=processes),
        'metadata': ocp.JsonCheckpointHandler(multiprocessing_options=processes),
    }
    return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  # -------------------------------------------------------------- Listing.

  def _complete(self, step: int) -> bool:
    return os.path.isfile(os.path.join(self.directory, str(step), _COMMIT_FILE))

  def all_steps(self) -> list[int]:
    """Steps with a complete (committed, renamed) checkpoint, ascending."""
    if not self._ensure_manager():
      return []
    if not self.enabled:
      self._manager.reload()  # The writing process may have saved since.
    return sorted(s for s in self._manager.all_steps() if self._complete(s))

  def _last_good(self) -> int | None:
    """The step named by LAST_GOOD, or None if absent or unreadable."""
    path = os.path.join(self.directory, LAST_GOOD)
    try:
      with open(path) as f:
        return int(f.read().strip())
    except FileNotFoundError:
      return None
    except (OSError, ValueError) as e:
      logger.warning('Ignoring unreadable %s (%s); using the newest complete step.',
                     path, e)
      return None

  def _candidates(self) -> list[int]:
    """Steps `restore()` tries, best first: LAST_GOOD, then older steps newest first.

    Steps newer than LAST_GOOD were renamed by Orbax but never confirmed by this
    store (the process died in between, or an async save was never waited on); like
    big_vision's pointer we do not trust them. Without LAST_GOOD (older workdirs),
    every complete step is a candidate, newest first.
    """
    self._finish_pending()
    steps = self.all_steps()
    good = self._last_good()
    if good is None or good not in steps:
      if good is not None:
        logger.warning('%s names step %d, which is not a complete checkpoint in %s; '
                       'using the newest complete step.', LAST_GOOD, good,
                       self.directory)
      return steps[::-1]
    newer = [s for s in steps if s > good]
    if newer:
      logger.warning('Ignoring unconfirmed checkpoint step(s) %s newer than %s=%d in '
                     '%s; they will be replaced when training passes them.', newer,
                     LAST_GOOD, good, self.directory)
    return [s for s in steps if s <= good][::-1]

  def latest_step(self) -> int | None:
    """The step `restore()` would try first, or None if there is no checkpoint."""
    candidates = self._candidates()
    return candidates[0] if candidates else None

  # --------------------------------------------------------------- Saving.

  def _write_help(self, what: str, err: BaseException) -> str:
    code = _errno_of(err)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      hint = 'free disk space (or lower train.keep_checkpoints)'
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
      hint = 'make the workdir writable or pass another --workdir'
    else:
      hint = 'check that the workdir is a writable directory with free space'
    # The first line only: TensorStore and Orbax errors carry dozens of lines of spec.
    cause = f' (OS error {code}: {os.strerror(code)})' if code else ''
    return (f'{what}{cause}: {errors.describe(err)}\nTo fix: '
            f'{hint}, then rerun the same command; training resumes from the last good '
            f'checkpoint{self._last_good_note()}.')

  def _last_good_note(self) -> str:
    good = self._last_good() if os.path.isdir(self.directory) else None
    return f' (step {good}, intact)' if good is not None else ''

  def _mark_good(self, step: int) -> None:
    atomic_write_text(os.path.join(self.directory, LAST_GOOD), f'{step}\n')

  def _finish_pending(self) -> None:
    """Confirms a previous async save (waits for it, then writes LAST_GOOD)."""
    if self._pending_step is None:
      return
    step, self._pending_step = self._pending_step, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if errors.lost_peer(e):
        raise
      raise CheckpointError(self._write_help(
          f'saving checkpoint step {step} to {self.directory} failed', e)) from e
    if self.primary and self._complete(step):
      self._mark_good(step)

  def save(self, step: int, state, metadata: Mapping[str, Any] | None = None,
           wait: bool = True) -> None:
    """Saves `state` (any pytree of arrays) and JSON-able `metadata` as `step`.

    With wait=False the write continues in the background; it is confirmed
    (LAST_GOOD) by the next `save`, `wait_until_finished`, `latest_step`, `restore`
    or `close`. Existing steps >= `step` (left by a run that was resumed from an
    earlier step) are replaced. Raises CheckpointError if the write fails; earlier
    checkpoints are untouched.
    """
    if not self.enabled:
      return
    step = int(step)
    metadata = dict(metadata or {})
    clash = sorted(set(metadata) & set(_RESERVED_METADATA))
    if clash:
      raise ValueError(f'metadata keys {clash} are reserved by CheckpointStore')
    self._finish_pending()
    meta = {**metadata, 'step': step, 'wall_time': time.time(), 'stage': self.stage}
    if self.primary:  # Orbax writes the metadata item from the primary process only.
      meta['state_digest'] = state_digest(state)
    try:
      json.dumps(meta)
    except TypeError as e:
      raise ValueError(f'checkpoint metadata must be JSON-serialisable: {e}') from e
    try:
      for stale in [s for s in self._manager.all_steps() if s >= step]:
        logger.warning('Replacing checkpoint step %d in %s: the run was resumed from '
                       'an earlier step.', stale, self.directory)
        self._manager.delete(stale)
      # force=True: the caller decides when to save (Orbax would otherwise silently
      # skip steps at or below its newest one). Orbax copies the arrays to the host
      # before it returns, so the caller may donate them to the next step at once.
      self._manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state),
          metadata=ocp.args.JsonSave(meta)))
      self._pending_step = step
      if wait:
        self._finish_pending()
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      self._pending_step = None
      if errors.lost_peer(e):
        raise
      raise CheckpointError(self._write_help(
          f'saving checkpoint step {step} to {self.directory} failed', e)) from e

  def wait_until_finished(self) -> None:
    if self.enabled and self._manager is not None:
      self._finish_pending()

  # ------------------------------------------------------------- Restoring.

  def _restore_step(self, step: int, abstract_state):
    """(state, metadata) of `step`, verified; raises on any problem."""
    step_dir = os.path.join(self.directory, str(step))
    if not self._complete(step):
      raise FileNotFoundError(f'{step_dir} is not a complete checkpoint '
                              f'(no {_COMMIT_FILE})')
    target = _with_default_sharding(abstract_state)
    try:
      # Each leaf is read straight into its target sharding (on every process, its own
      # devices), at exactly the target's shape (strict restore arguments).
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
          metadata=ocp.args.JsonRestore()))
    except ValueError as e:
      missing = _missing_files(os.path.join(step_dir, 'state'), e)
      if missing:
        raise MissingFilesError(
            f'{step_dir}/state has lost files since it was saved (deleted or moved): '
            f'{missing}') from e
      difference = _layout_difference(os.path.join(step_dir, 'state'), abstract_state)
      if difference is None:
        raise
      raise LayoutMismatchError(
          f'{step_dir} holds other parameters than this model ({difference}). It was '
          'written by another version of mipae_jax or for another config.model.') from e
    state, meta = out.state, out.metadata
    if not isinstance(meta, dict):
      raise ValueError(f'{step_dir}/metadata: expected a JSON object, got {meta!r}')
    if meta.get('step') != step:
      raise ValueError(f'{step_dir}/metadata names step {meta.get("step")}, not {step}')
    _check_against_target(state, abstract_state)
    digest = tree_digest(_host_tree(state))
    if digest != meta.get('state_digest'):
      raise ValueError(f'{step_dir}/state: contents do not match the digest recorded '
                       'at save time (file corrupted or modified)')
    return state, meta

  def restore(self, abstract_state, step: int | None = None):
    """Restores a checkpoint into the target's shardings.

    Args:
      abstract_state: the target pytree of `jax.ShapeDtypeStruct`, e.g.
        `jax.eval_shape(functools.partial(create_train_state, config), key)`; static
        fields (TrainState's `tx`, `apply_fn`) are taken from it, so the result is a
        usable TrainState. Leaves carrying a sharding (training: the mesh's replicated
        one) are restored with it, the others onto this process's first device.
      step: a specific step, or None for the newest good one (LAST_GOOD first,
        falling back past steps that fail to restore, each with a warning).
    Returns:
      (state, metadata dict, step).
    Raises:
      CheckpointError: naming the directory, each step tried and why it failed.
    """
    if not self._ensure_manager():
      raise CheckpointError(f'no checkpoints: {self.directory} does not exist')
    if step is not None:
      step = int(step)
      self._finish_pending()
      if step not in self.all_steps():
        raise CheckpointError(
            f'no complete checkpoint for step {step} in {self.directory} '
            f'(complete steps: {self.all_steps()})')
      try:
        state, meta = self._restore_step(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        if errors.lost_peer(e):
          raise
        raise CheckpointError(
            f'checkpoint step {step} in {os.path.join(self.directory, str(step))} '
            f'cannot be restored: {errors.describe(e)}') from e
      return state, meta, step
    failures = []
    for candidate in self._candidates():
      try:
        state, meta = self._restore_step(candidate, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        if errors.lost_peer(e):  # Another process failed, not this step: no fallback.
          raise
        reason = errors.describe(e)
        logger.warning('Checkpoint step %d in %s cannot be restored (%s); falling '
                       'back to the previous step.', candidate, self.directory, reason)
        failures.append(f'  step {candidate}: {reason}')
        continue
      return state, meta, candidate
    if not failures:
      raise CheckpointError(f'no complete checkpoint in {self.directory}')
    if all(MissingFilesError.__name__ in f for f in failures):
      advice = ('Files of these checkpoints are missing: put them back (from a copy or a '
                'backup) and rerun, or start afresh with a new --workdir.')
    elif all(LayoutMismatchError.__name__ in f for f in failures):
      advice = ('These checkpoints are intact but hold another parameter layout: keep '
                'them for the code that wrote them, and start afresh with a new --workdir. '
                '(Published PyTorch weights load through mipae_jax.convert.)')
    else:
      advice = 'Start afresh with a new --workdir, or move the damaged step directories aside.'
    raise CheckpointError(f'no checkpoint in {self.directory} could be restored; tried:\n'
                          + '\n'.join(failures) + '\n' + advice)

  def close(self) -> None:
    if self._manager is None:
      return
    try:
      if self.enabled:
        self._finish_pending()
    finally:
      self._manager.close()
      self._manager = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
