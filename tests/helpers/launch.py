"""Starting `train_worker.py` in a subprocess and watching it, for the fault tests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, 'train_worker.py')


# What every process of the suite compiles with (besides its device count): tiny programs,
# where XLA's compile time dominates, so optimisation level 0 and XLA:CPU's loop emitters,
# which compile faster than its fusion emitters to the same bits (`make test` passes the
# same; `python -m benchmarks.suite_compile`).
COMPILE_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'


def worker_env(devices: int, cache_dir: str | None = None) -> dict:
  """The environment of a worker: its own XLA_FLAGS (not inherited) and, if given, a
  persistent compilation cache shared by the test's workers (compiles once; a cached
  executable computes the same bits as a fresh compile)."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONUNBUFFERED'] = '1'
  if cache_dir:
    env['JAX_COMPILATION_CACHE_DIR'] = cache_dir
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Worker:
  """One `train_worker.py` process; stdout/stderr collected by reader threads."""

  def __init__(self, workdir, out, *, ae_steps=12, ckpt_every=2, step_delay=0.0,
               devices=4, cache_dir=None, extra=()):
    args = [sys.executable, WORKER, f'--workdir={workdir}', f'--out={out}',
            f'--ae_steps={ae_steps}', f'--ckpt_every={ckpt_every}',
            f'--step_delay={step_delay}', *extra]
    self.started_wall = time.time()  # Compared with file mtimes.
    self.proc = subprocess.Popen(args, cwd=ROOT, env=worker_env(devices, cache_dir),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self._out, self._err = [], []
    self._threads = [threading.Thread(target=self._read, args=(s, buf), daemon=True)
                     for s, buf in ((self.proc.stdout, self._out),
                                    (self.proc.stderr, self._err))]
    for t in self._threads:
      t.start()

  @staticmethod
  def _read(stream, buf):
    for line in stream:
      buf.append(line)

  @property
  def stdout(self) -> str:
    return ''.join(self._out)

  @property
  def stderr(self) -> str:
    return ''.join(self._err)

  def steps(self) -> list[int]:
    """Train steps this process finished, in order (its `STEP k` lines)."""
    return [int(m) for m in re.findall(r'^STEP (\d+)$', self.stdout, re.M)]

  def resumed_from(self) -> int | None:
    m = re.search(r'ae: resumed from step (\d+)', self.stderr)
    return int(m.group(1)) if m else None

  def wait_until(self, predicate, timeout: float, poll: float = 0.0005) -> bool:
    """Polls `predicate()` until true (True) or the process exits or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
      if predicate():
        return True
      if self.proc.poll() is not None:
        return bool(predicate())
      time.sleep(poll)
    return False

  def signal(self, sig) -> bool:
    """Sends `sig` if the process still runs; returns whether it did."""
    if self.proc.poll() is not None:
      return False
    self.proc.send_signal(sig)
    return True

  def wait(self, timeout: float) -> int:
    try:
      rc = self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      raise AssertionError(f'worker did not exit within {timeout} s\nstdout:\n'
                           f'{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}') from None
    for t in self._threads:
      t.join(10)
    return rc

  def report(self) -> str:
    return f'rc={self.proc.returncode}\nstdout:\n{self.stdout[-2000:]}\nstderr:\n' \
           f'{self.stderr[-4000:]}'
