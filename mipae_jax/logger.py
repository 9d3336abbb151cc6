"""Metrics on the host: JSON lines, TensorBoard (tensorboardX, no TensorFlow), a
progress bar, and the NaN/inf stop.

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
from collections.abc import Mapping
from typing import Any

import numpy as np

from mipae_jax import errors

METRICS_FILE = 'metrics.jsonl'
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
      # Imported here so that disabled processes never touch tensorboardX.
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(self.workdir, TENSORBOARD_DIR))

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


def drop_records_after(workdir: str, stage: str, step: int) -> int:
  """Rewrites `workdir/metrics.jsonl` for a run resumed at `step` of `stage`: drops
  that stage's records past `step` (they are redone, and would appear twice) and any
  line that is not one whole JSON record (a run killed mid-write leaves a partial last
  line, which the next append would glue to its first record). TensorBoard likewise
  purges orphaned events on resume. Atomic (temp file + rename); returns lines dropped.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return 0
  with open(path, 'rb') as f:
    lines = f.read().split(b'\n')
  kept, dropped = [], 0
  for raw in lines:
    if not raw.strip():
      continue
    try:
      record = json.loads(raw)
      ok = isinstance(record, dict) and not (record.get('stage') == stage
                                             and int(record.get('step', 0)) > step)
    except (ValueError, TypeError):
      ok = False
    if ok:
      kept.append(raw.decode())
    else:
      dropped += 1
  if dropped:
    from mipae_jax import workdir
    workdir.atomic_write_text(path, ''.join(line + '\n' for line in kept))
  return dropped


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


class ProgressBar:
  """tqdm bar with steps/s and the latest losses; silent when not on a terminal.

  Example:
    with ProgressBar(total=config.train.ae_steps, initial=start, desc='ae') as bar:
      ...
      bar.update(config.train.log_every, {'loss': 0.02})
  """

  def __init__(self, total: int, initial: int = 0, desc: str | None = None,
               disabled: bool = False):
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    # Not a TTY (CI, files, tests): a bar would only fill logs with carriage returns.
    # A notebook kernel is no TTY but renders tqdm.auto's widget.
    interactive = getattr(sys.stderr, 'isatty', lambda: False)() or _in_notebook()
    disable = disabled or not interactive
    self.disabled = disable
    self._bar = tqdm(total=total, initial=initial, desc=desc, unit='step',
                     dynamic_ncols=True, disable=disable)

  def update(self, n: int = 1, metrics: Mapping[str, Any] | None = None) -> None:
    if self.disabled:
      return
    if metrics:
      self._bar.set_postfix({k: f'{_to_float(v):.4g}' for k, v in metrics.items()},
                            refresh=False)
    self._bar.update(n)

  def close(self) -> None:
    self._bar.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
