"""Metrics on the host: JSON lines, TensorBoard (tensorboardX, no TensorFlow), the
progress report (a bar on a terminal, plain lines in a batch job's log), and the
NaN/inf stop.

Scalars reach these functions only every `train.log_every` steps (fetching them is a
device sync), so none of this is on the per-step path.

  workdir/metrics.jsonl   one JSON object per `write_scalars` call:
                          {"step": 100, "stage": "ae", "loss": 0.02, ...}
                          (a resumed run appends; readers keep the last record of
                          each (stage, step))
  workdir/tensorboard/    event files: scalars as `<stage>/<name>`, images
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from mipae_jax import errors

METRICS_FILE = 'metrics.jsonl'
UNREADABLE_SUFFIX = '.unreadable'  # Lines of METRICS_FILE that are no record, set aside.
TENSORBOARD_DIR = 'tensorboard'


class NonFiniteError(errors.RunFailure, FloatingPointError):
  """A loss or metric became NaN or infinite; training must stop."""


def _to_float(value) -> float:
  return float(np.asarray(value))


def _json_number(x: float):
  # NaN/inf are not JSON; keep every line parseable by strict readers.
  return x if math.isfinite(x) else str(x)


def _to_uint8_image(name: str, image) -> np.ndarray:
  """`[H, W, C]` uint8, or float in [0, 1] -> `[H, W, 3 or 4]` uint8 (C=1 is tiled:
  PNG encoders and TensorBoard handle RGB everywhere)."""
  a = np.asarray(image)
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
    raise ValueError(f'image {name!r}: expected [H, W, C] with C in (1, 3, 4), got '
                     f'shape {a.shape}')
  if a.dtype != np.uint8:
    if not np.issubdtype(a.dtype, np.floating):
      raise ValueError(f'image {name!r}: expected uint8 or float in [0, 1], got '
                       f'{a.dtype}')
    a = np.round(np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0).astype(np.uint8)
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  return a


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported on first use (disabled processes never touch
  tensorboardX) without PyTorch: tensorboardX imports torch at import time when it is
  installed (as on Colab), to accept torch tensors, which costs a second or more per
  process; this logger passes numpy only. A torch that is already imported is used."""
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError meanwhile.
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if sys.modules.get('torch', 0) is None:
      del sys.modules['torch']
  return SummaryWriter


class MetricLogger:
  """Appends scalars to `workdir/metrics.jsonl` and writes TensorBoard events.

  Multi-process: pass `enabled=(jax.process_index() == 0)`; a disabled logger
  creates no file or directory.

  Args:
    workdir: the run directory.
    enabled: False writes nothing.
    stage: default stage recorded with each scalar write ('ae', 'lstm', 'eval').
  """

  def __init__(self, workdir: str, enabled: bool = True, stage: str | None = None):
    self.workdir = os.fspath(workdir)
    self.enabled = enabled
    self.stage = stage
    self._jsonl = None
    self._tb = None
    if enabled:
      os.makedirs(self.workdir, exist_ok=True)
      self._jsonl = open(os.path.join(self.workdir, METRICS_FILE), 'a')
      self._tb = _summary_writer_class()(os.path.join(self.workdir, TENSORBOARD_DIR))

  @property
  def metrics_path(self) -> str:
    return os.path.join(self.workdir, METRICS_FILE)

  def write_scalars(self, step: int, scalars: Mapping[str, Any],
                    stage: str | None = None) -> None:
    """Writes `{name: scalar}` (floats, numpy or jax scalars) at `step`."""
    if not self.enabled:
      return
    stage = stage or self.stage
    values = {k: _to_float(v) for k, v in scalars.items()}
    record = {'step': int(step), 'stage': stage,
              **{k: _json_number(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record, allow_nan=False) + '\n')
    # Flushed per call: a killed run keeps every line written before the kill.
    self._jsonl.flush()
    for name, v in values.items():
      self._tb.add_scalar(f'{stage}/{name}' if stage else name, v, int(step))

  def write_images(self, step: int, images: Mapping[str, Any],
                   stage: str | None = None) -> None:
    """Writes `{name: [H, W, C] uint8, or float in [0, 1]}` as TensorBoard images."""
    if not self.enabled:
      return
    stage = stage or self.stage
    for name, image in images.items():
      self._tb.add_image(f'{stage}/{name}' if stage else name,
                         _to_uint8_image(name, image), int(step), dataformats='HWC')

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled and self._jsonl is not None:
      self._jsonl.close()
      self._tb.close()
      self._jsonl = self._tb = None
      self.enabled = False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def check_finite(step: int, metrics: Mapping[str, Any], stage: str,
                 checkpoint_dir: str | None = None, saved_step: int | None = -1) -> None:
  """Raises NonFiniteError if any of `metrics` (host scalars) is NaN or infinite.

  The message names the stage, the step and every non-finite term with its value,
  and says how to resume: from `saved_step`, the stage's newest checkpoint, or (None)
  from scratch, since none was saved yet (-1: not known to the caller). Call it before
  saving a checkpoint, so the last good one is never replaced by a diverged state.
  """
  bad = {}
  for name, value in metrics.items():
    v = _to_float(value)
    if not math.isfinite(v):
      bad[name] = v
  if not bad:
    return
  terms = ', '.join(f'{k}={v}' for k, v in bad.items())
  lr_flag = '--config.lstm_optim.lr' if stage == 'lstm' else '--config.optim.lr'
  where = f' in {checkpoint_dir}' if checkpoint_dir else ''
  lower = (f'start a new --workdir with a lower learning rate (e.g. {lr_flag}=<smaller>), '
           'since the learning rate is part of the recorded config')
  if saved_step is None:
    raise NonFiniteError(
        f'Non-finite value(s) at {stage} stage step {step}: {terms}. No checkpoint of the '
        f'{stage} stage was saved yet{where}, so there is nothing to resume from, and the '
        f'same command would start from scratch and diverge the same way: {lower}.')
  at = f' (step {saved_step})' if saved_step >= 0 else ''
  raise NonFiniteError(
      f'Non-finite value(s) at {stage} stage step {step}: {terms}. Training stopped '
      f'before saving, so the last good checkpoint{at}{where} is kept. To resume, rerun '
      f'the same command (it restarts from that checkpoint); if it diverges again, {lower}.')


# Suffix of the key a log interval's record gets for each gradient norm that was exactly 0
# at every step of it: `grad_norm_zero_from` = the interval's first step.
ZERO_FROM = '_zero_from'


def zero_gradient_cause(stage: str, trained_before: bool) -> str:
  """The likely cause of a gradient norm exactly 0 over a whole log interval, and what
  to try. `trained_before`: the norm was above 0 earlier in the stage."""
  if not trained_before:
    return ('those parameters are not training (a zero loss weight, a detached term or a '
            'dead network?)')
  lr_flag = '--config.lstm_optim.lr' if stage == 'lstm' else '--config.optim.lr'
  return ('those parameters trained at first and then stopped: most likely an update so '
          'large that the network saturated (or its parameters overflowed) where every '
          'gradient is 0, i.e. a learning rate too large, or units that died in training. '
          f'Start a new --workdir with a lower {lr_flag}')


def zero_gradient_flags(records) -> dict:
  """The stages whose gradient norms were exactly 0 over a whole log interval, from the
  records of metrics.jsonl (`read_records`).

  Returns {stage: {'from_step': the first such interval's first step, 'to_step': the
  last such interval's last step, 'intervals': how many, 'norms': [names],
  'trained_before': whether the stage trained before from_step}}, stages in the order
  they first appear.
  """
  out = {}
  for record in records:
    zero = {k[:-len(ZERO_FROM)]: int(v) for k, v in record.items()
            if k.endswith(ZERO_FROM)}
    if not zero:
      continue
    flag = out.setdefault(record.get('stage'), {'from_step': min(zero.values()),
                                                'intervals': 0, 'norms': []})
    flag['from_step'] = min(flag['from_step'], *zero.values())
    flag['to_step'] = int(record['step'])
    flag['intervals'] += 1
    flag['norms'] = sorted(set(flag['norms']) | set(zero))
  for flag in out.values():
    # An interval from step 1 had no step before it; a later first zero interval means
    # the interval before it, checked and not flagged, held a step where they moved.
    flag['trained_before'] = flag['from_step'] > 1
  return out


class Dropped(NamedTuple):
  """What `drop_records_after` took out of `metrics.jsonl`, in lines."""
  redone: int  # Records of the stage past the resumed step: the run writes them again.
  partial: int  # A last line cut off mid-write (a killed run): 0 or 1.
  set_aside: int  # Other lines that are not one JSON record: moved to UNREADABLE_FILE.


def drop_records_after(workdir: str, stage: str, step: int) -> Dropped:
  """Rewrites `workdir/metrics.jsonl` for a run resumed at `step` of `stage`: drops
  that stage's records past `step` (they are redone, and would appear twice) and a last
  line cut off mid-write (which the next append would glue to its first record).
  TensorBoard likewise purges orphaned events on resume. Any other line that is not one
  JSON record (written there by hand or by another tool) is not the run's to delete: it
  is appended to `metrics.jsonl.unreadable` beside it. Atomic (temp file + rename).
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return Dropped(0, 0, 0)
  with open(path, 'rb') as f:
    text = f.read()
  lines = text.split(b'\n')
  last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
  kept, unreadable = [], []
  redone = partial = 0
  for i, raw in enumerate(lines):
    if not raw.strip():
      continue
    try:
      record = json.loads(raw)
      if not isinstance(record, dict):
        raise TypeError('not a record')
    except (ValueError, TypeError):
      if i == last and not text.endswith(b'\n'):
        partial += 1
      else:
        unreadable.append(raw.decode(errors='replace'))
      continue
    if record.get('stage') == stage and int(record.get('step', 0)) > step:
      redone += 1
    else:
      kept.append(raw.decode())
  if unreadable:
    with open(path + UNREADABLE_SUFFIX, 'a') as f:
      f.write(''.join(line + '\n' for line in unreadable))
  if redone or partial or unreadable:
    from mipae_jax import workdir
    workdir.atomic_write_text(path, ''.join(line + '\n' for line in kept))
  return Dropped(redone, partial, len(unreadable))


def read_records(workdir: str) -> list[dict]:
  """Every record of `workdir/metrics.jsonl`, in order (raises on a malformed line)."""
  path = os.path.join(workdir, METRICS_FILE)
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _in_notebook() -> bool:
  """True inside a running Jupyter kernel (imported ipykernel alone is not enough: a
  test process that launched a kernel has it imported too)."""
  ipython = sys.modules.get('IPython')
  shell = ipython.get_ipython() if ipython is not None else None
  return shell is not None and 'IPKernelApp' in getattr(shell, 'config', {})


def _duration(seconds: float) -> str:
  """`H:MM:SS` (hours unbounded: a long run's time left stays one token)."""
  m, s = divmod(round(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}:{m:02d}:{s:02d}'


def _rate(steps_per_s: float) -> str:
  # Three significant digits, but no exponent for a fast stage.
  return f'{steps_per_s:.3g}' if steps_per_s < 100 else f'{steps_per_s:.0f}'


class ProgressBar:
  """Training progress: a tqdm bar on a terminal, plain lines in a batch job's log.

  Off a terminal (stderr to a file or a pipe, as on a cluster) a bar would switch
  itself off and leave the log empty until the run ends, so each `update` (every
  `train.log_every` steps) writes one flushed line instead:

    ae: step 200/1000  critic_loss=1.386 loss=0.0213 mi_loss=-0.693 ...  14.2 steps/s  0:00:56 left

  Losses are the metrics named `*loss`, except per-channel terms; steps/s counts from
  the end of the compiled first step (`compiled`), so compiling does not inflate the
  time left. Both modes print the compile time once.

  Example:
    with ProgressBar(total=config.train.ae_steps, initial=start, desc='ae') as bar:
      ...
      bar.compiled(seconds, step=start + 1)  # After the first step.
      ...
      bar.update(config.train.log_every, {'loss': 0.02})

  Args:
    total: the stage's last step.
    initial: the step the stage starts from (a resumed run's checkpoint).
    desc: the stage ('ae', 'lstm'), leading each line.
    disabled: True prints nothing at all.
    interactive: True draws the bar, False writes plain lines; default: stderr is a
      terminal, or this is a notebook kernel (no TTY, but tqdm.auto draws a widget).
    stream: where the bar and the lines go (default `sys.stderr`).
    clock: monotonic seconds (tests pass a fake one).
  """

  def __init__(self, total: int, initial: int = 0, desc: str | None = None,
               disabled: bool = False, interactive: bool | None = None,
               stream=None, clock=time.perf_counter):
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    if interactive is None:
      interactive = getattr(sys.stderr, 'isatty', lambda: False)() or _in_notebook()
    self.disabled = disabled
    self.interactive = interactive and not disabled
    self.total, self.step, self.desc = total, initial, desc
    self._stream = sys.stderr if stream is None else stream
    self._clock = clock
    self._since = (initial, clock())  # (step, time) that steps/s counts from.
    self._bar = tqdm(total=total, initial=initial, desc=desc, unit='step',
                     dynamic_ncols=True, disable=not self.interactive, file=self._stream)

  def _print(self, line: str) -> None:
    if self.interactive:
      self._bar.write(line, file=self._stream)  # Above the bar, which is redrawn.
    else:
      self._stream.write(line + '\n')
      self._stream.flush()  # A job's log shows each line now, not at exit.

  def compiled(self, seconds: float, step: int) -> None:
    """Reports how long the first step took to compile; steps/s counts from `step`.

    Args:
      seconds: the first step call's wall time (jit compiles within that call, which
        returns once the step is dispatched).
      step: the step count after that call (`initial + 1`).
    """
    if self.disabled:
      return
    self._since = (step, self._clock())
    self._print(f'{self.desc}: first step compiled in {seconds:.1f} s')

  def update(self, n: int = 1, metrics: Mapping[str, Any] | None = None) -> None:
    """Advances by `n` steps; `metrics` (host scalars) are the latest values."""
    if self.disabled:
      return
    self.step += n
    if self.interactive:
      if metrics:
        self._bar.set_postfix({k: f'{_to_float(v):.4g}' for k, v in metrics.items()},
                              refresh=False)
      self._bar.update(n)
      return
    parts = [f'{self.desc}: step {self.step}/{self.total}']
    losses = [f'{k}={_to_float(v):.4g}' for k, v in (metrics or {}).items()
              if k.endswith('loss')]  # Not `recon_loss_ch0`, `grad_norm`, `epoch`.
    if losses:
      parts.append(' '.join(losses))
    done, elapsed = self.step - self._since[0], self._clock() - self._since[1]
    if done > 0 and elapsed > 0:  # Unknown at the compiled step itself.
      rate = done / elapsed
      parts += [f'{_rate(rate)} steps/s', f'{_duration((self.total - self.step) / rate)} left']
    self._print('  '.join(parts))

  def close(self) -> None:
    self._bar.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
