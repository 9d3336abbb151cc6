"""`mipae-train` stops on SIGTERM with a saved checkpoint and exit 143."""

import os
import signal
import subprocess
import sys
import time

from mipae_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sigterm_saves_and_exits_with_128_plus_signal(tmp_path):
  workdir = tmp_path / 'run'
  env = {**os.environ,  # The suite's XLA_FLAGS: its tiny programs are cached.
         'XLA_FLAGS': os.environ.get('XLA_FLAGS', '--xla_backend_optimization_level=0')}
  proc = subprocess.Popen(
      [sys.executable, '-m', 'mipae_jax.commands.train', '--config=tiny',
       '--config.train.ae_steps=100000', '--config.train.ckpt_every=100000',
       f'--workdir={workdir}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 240
  while not (metrics.exists() and metrics.stat().st_size > 0):  # Training has started.
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert time.time() < deadline, 'training did not start'
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert 'SIGTERM received: saved the ae stage at step' in err
  saved = int(err.split('saved the ae stage at step ')[1].split()[0])
  store = checkpoint.CheckpointStore(str(workdir), 'ae', enabled=False)
  assert store.latest_step() == saved >= 1
