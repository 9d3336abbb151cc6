"""The run's processes: stop signals, lost peers, agreement on where to resume.

A preempted run (SIGTERM/SIGINT) saves a checkpoint at a step boundary and raises
`Preempted` (several processes save together, so they first agree to stop, at a log
step: `agree_on_stop`); a process whose peers died raises `PeerLost` instead of waiting
forever in a collective; every process must resume from the same step (`agree_on_start`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import NoReturn

import jax
import numpy as np

from mipae_jax import checkpoint, errors


class Preempted(RuntimeError):
  """Training stopped on SIGTERM/SIGINT after saving a checkpoint.

  `signum` is the signal received; a command-line entry point should exit with
  `128 + signum` (130 for SIGINT, 143 for SIGTERM), as a shell does for a killed job.
  """

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = int(signum)


class PeerLost(RuntimeError):
  """A cross-process collective failed: another process of the run died."""


# EX_TEMPFAIL: a temporary failure; running the same command again resumes.
PEER_LOST_EXIT_CODE = 75


def exit_after_peer_lost(error: PeerLost, code: int = PEER_LOST_EXIT_CODE) -> NoReturn:
  """Prints `error` and ends this process at once, with `code`.

  Once a peer is gone, JAX's distributed shutdown at interpreter exit aborts the process
  (SIGABRT, after our message). By the time `PeerLost` reaches the caller the stage has
  closed its checkpoint store and logs, so skipping that shutdown loses nothing.
  """
  print(f'PeerLost: {error}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)  # pylint: disable=protected-access


def is_chief() -> bool:
  return jax.process_index() == 0


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           heartbeat_timeout_seconds: int = 60,
                           initialization_timeout: int = 300) -> None:
  """`jax.distributed.initialize` with failure detection bounded in time.

  If a process dies (killed, host lost), the coordination service notices its missing
  heartbeats within `heartbeat_timeout_seconds` and stops every other process with an
  error naming the lost task, instead of leaving them blocked in a collective forever.
  `initialization_timeout` bounds the wait for all processes to connect at start.
  On CPU the cross-process collectives use gloo (JAX's default CPU implementation).
  """
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=initialization_timeout,
                             heartbeat_timeout_seconds=heartbeat_timeout_seconds)


def agree_on_start(stage: str, start: int, directory: str) -> None:
  """Several processes must resume from the same step, or their collectives would
  mix different steps (or wait forever); raises naming each process's step."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  steps = np.asarray(multihost_utils.process_allgather(np.int32(start))).reshape(-1)
  if np.any(steps != steps[0]):
    raise checkpoint.CheckpointError(
        f'{stage}: the processes would resume from different steps '
        f'{ {i: int(s) for i, s in enumerate(steps)} } (process: step) in {directory}. '
        'Every process must see the same workdir: put it on a filesystem shared by all '
        'hosts (e.g. gs://, NFS).')


def agree_on_stop(stopping: str | None, signum: int | None
                  ) -> tuple[str | None, int | None]:
  """(signal name, number) if any process was signalled to stop, else (None, None).

  A collective: every process calls it at the same steps. The lowest process signalled
  names the signal for all.
  """
  from jax.experimental import multihost_utils
  nums = np.asarray(multihost_utils.process_allgather(
      np.int32(signum if stopping else 0))).reshape(-1)
  signalled = [int(n) for n in nums if n]
  if not signalled:
    return None, None
  return signal.Signals(signalled[0]).name, signalled[0]


@contextlib.contextmanager
def stop_requests():
  """Turns SIGTERM/SIGINT into a flag the training loop polls, so a preempted run
  saves a checkpoint at a step boundary instead of dying mid-write."""
  flag = {'stop': None, 'signum': None}

  def handler(signum, _frame):
    flag['stop'] = signal.Signals(signum).name
    flag['signum'] = signum

  previous = {}
  for sig in (signal.SIGTERM, signal.SIGINT):
    try:
      previous[sig] = signal.signal(sig, handler)
    except ValueError:  # Not the main thread (e.g. some notebook runners): no handler.
      pass
  try:
    yield flag
  finally:
    for sig, h in previous.items():
      signal.signal(sig, h)


@contextlib.contextmanager
def peer_failures(stage: str, current_step, store):
  """Turns a failed cross-process collective into `PeerLost` naming the step and the
  checkpoint to resume from (single process: errors pass through unchanged)."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 - only lost peers are turned into PeerLost.
    if not errors.lost_peer(e):
      raise
    try:
      good = store.latest_step()
    except Exception:  # noqa: BLE001 - only for the message.
      good = None
    where = (f'step {good} in {store.directory}' if good is not None
             else f'none yet in {store.directory}')
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise PeerLost(
        f'{stage} stage, after step {current_step()}: process {jax.process_index()} of '
        f'{jax.process_count()} lost the others ({first}). Another process most likely '
        'died (killed, out of memory, host lost), so this one stops too instead of '
        f'waiting forever. Last good checkpoint: {where}. Restart every process with '
        'the same command to resume from it.') from e
