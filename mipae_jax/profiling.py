"""Profiles of training steps: a `jax.profiler` trace of a window of steps, and a table of
where the time went, per XLA op kind.

  profiler = StepProfiler(f'{workdir}/profile/ae', first_step=start + 1, num_steps=5)
  for step in ...:
    profiler.before_step(step)      # starts the trace at first_step
    state, metrics = train_step(...)
    profiler.after_step(step + 1, metrics)  # stops once num_steps have run
  profiler.close()

The trace directory opens in TensorBoard's profile plugin or in Perfetto
(`*.trace.json.gz`); `summary.md` beside it lists op time per kind (convolutions,
fusions, dots, copies, ...). `summarize(trace_dir)` builds that table from any trace
taken with `create_perfetto_trace=True` (`benchmarks/profile_step.py` uses it).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import logging
import os
import re

import jax

log = logging.getLogger(__name__)

# Host-side spans of the runtime and of Python, not device work.
_NOT_OPS = re.compile(r'^\$|Execute|PjitFunction|PjRt|ParseArguments|Handle inputs|'
                      r'block_until_ready|^while$|^call$')


def op_kind(name: str) -> str:
  """`'transpose_copy_fusion.13'` -> `'transpose_copy_fusion'`: the op's kind."""
  return re.sub(r'(\.\d+)+$', '', name)


def op_times(trace_file: str) -> tuple[dict[str, float], dict[str, int]]:
  """(microseconds, count) per op kind in one Perfetto trace (`*.trace.json.gz`),
  summed over every thread that ran ops."""
  with gzip.open(trace_file, 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') != 'X' or 'dur' not in e or _NOT_OPS.search(e.get('name', '')):
      continue
    kind = op_kind(e['name'])
    total[kind] += float(e['dur'])
    count[kind] += 1
  return dict(total), dict(count)


def summarize(trace_dir: str, num_steps: int, top: int = 20) -> str:
  """A markdown table of op time per kind and per step, from the newest Perfetto trace
  under `trace_dir`. Times are summed over threads (two ops running at once both count),
  so the total can exceed the wall time; ops the runtime does not trace (on CPU, the
  library convolutions) are the wall time's remainder."""
  files = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f'no Perfetto trace (*.trace.json.gz) under {trace_dir}')
  total, count = op_times(files[-1])
  rows = sorted(total.items(), key=lambda kv: -kv[1])
  lines = [f'Op time per step over {num_steps} steps ({files[-1]}), summed over threads:',
           '', '| op kind | ms / step | calls / step |', '|---|---|---|']
  for kind, us in rows[:top]:
    lines.append(f'| {kind} | {us / num_steps / 1e3:.1f} | {count[kind] / num_steps:g} |')
  rest = sum(us for _, us in rows[top:])
  if rest:
    lines.append(f'| (other {len(rows) - top} kinds) | {rest / num_steps / 1e3:.1f} | |')
  lines.append(f'| **all traced ops** | {sum(total.values()) / num_steps / 1e3:.1f} | |')
  return '\n'.join(lines) + '\n'


class StepProfiler:
  """Traces steps `[first_step, first_step + num_steps)` of a loop into `trace_dir`.

  `num_steps = 0` (or `enabled=False`, e.g. on processes other than 0) does nothing.
  Start `first_step` after the first step of a run, so that compilation stays out.
  """

  def __init__(self, trace_dir: str, first_step: int, num_steps: int, enabled: bool = True):
    self.trace_dir, self.first, self.num = trace_dir, first_step, num_steps
    self.enabled = enabled and num_steps > 0
    self.active = False

  def before_step(self, step: int) -> None:
    """Call with the number of the step about to run (0-based count of steps done)."""
    if self.enabled and not self.active and step == self.first:
      os.makedirs(self.trace_dir, exist_ok=True)
      try:
        jax.profiler.start_trace(self.trace_dir, create_perfetto_trace=True)
      except RuntimeError as e:  # Another trace is running (the caller's own): keep it.
        log.warning('Not profiling steps %d+ into %s: %s', step, self.trace_dir, e)
        self.enabled = False
        return
      self.active = True

  def after_step(self, steps_done: int, outputs) -> None:
    """Call after a step with the steps done so far and anything the step returned."""
    if self.active and steps_done >= self.first + self.num:
      jax.block_until_ready(outputs)  # The traced window holds the steps' device work.
      self._stop(steps_done - self.first)

  def close(self) -> None:
    """Stops a trace still running (a loop that ended inside the window)."""
    if self.active:
      self._stop(None)

  def _stop(self, steps: int | None) -> None:
    jax.profiler.stop_trace()
    self.active, self.enabled = False, False
    if not steps:
      log.info('Profile of a partial window written to %s', self.trace_dir)
      return
    try:
      table = summarize(self.trace_dir, steps)
    except (OSError, ValueError, KeyError) as e:  # The trace itself is still there.
      log.warning('Profile written to %s; no op summary (%s)', self.trace_dir, e)
      return
    with open(os.path.join(self.trace_dir, 'summary.md'), 'w') as f:
      f.write(table)
    log.info('Profile of %d steps written to %s (summary.md: op time per kind)', steps,
             self.trace_dir)
