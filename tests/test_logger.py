"""Metric logger (JSON lines + TensorBoard without TensorFlow), NaN stop, progress bar."""

import glob
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import threading

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from mipae_jax import logger as logger_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_events(workdir):
  """All `Event` protos in the run's TensorBoard files (TFRecord framing: u64 length,
  u32 crc, payload, u32 crc), read without TensorFlow."""
  events = []
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')):
    with open(path, 'rb') as f:
      data = f.read()
    i = 0
    while i < len(data):
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + n])
      events.append(event)
      i += 12 + n + 4
  return events


def test_scalars_and_images(tmp_path):
  workdir = str(tmp_path)
  with logger_lib.MetricLogger(workdir, stage='ae') as log:
    log.write_scalars(1, {'loss': jnp.float32(0.5), 'mi_loss': np.float64(-0.25)})
    log.write_scalars(2, {'loss': 0.125})
    log.write_scalars(3, {'lstm_loss': 2.0}, stage='lstm')
    log.write_images(2, {'analogy': np.random.default_rng(0).random((16, 24, 3)),
                         'gray': np.zeros((8, 8, 1), np.uint8)})
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert records == [
      {'step': 1, 'stage': 'ae', 'loss': 0.5, 'mi_loss': -0.25},
      {'step': 2, 'stage': 'ae', 'loss': 0.125},
      {'step': 3, 'stage': 'lstm', 'lstm_loss': 2.0},
  ]
  events = read_events(workdir)
  scalars = {(v.tag, e.step): v.simple_value
             for e in events for v in e.summary.value if v.HasField('simple_value')}
  assert scalars == {('ae/loss', 1): 0.5, ('ae/mi_loss', 1): -0.25,
                     ('ae/loss', 2): 0.125, ('lstm/lstm_loss', 3): 2.0}
  images = {v.tag: v.image for e in events for v in e.summary.value
            if v.HasField('image')}
  assert images['ae/analogy'].height == 16 and images['ae/analogy'].width == 24
  assert images['ae/gray'].colorspace == 3
  assert images['ae/analogy'].encoded_image_string.startswith(b'\x89PNG')


def test_resumed_run_appends_and_nan_stays_valid_json(tmp_path):
  workdir = str(tmp_path)
  with logger_lib.MetricLogger(workdir) as log:
    log.write_scalars(1, {'loss': 1.0}, stage='ae')
  with logger_lib.MetricLogger(workdir) as log:
    log.write_scalars(2, {'loss': float('nan'), 'x': float('-inf')}, stage='ae')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = f.read().splitlines()
  assert len(lines) == 2
  last = json.loads(lines[1], parse_constant=lambda c: pytest.fail(f'bare {c}'))
  assert last == {'step': 2, 'stage': 'ae', 'loss': 'nan', 'x': '-inf'}


def test_bad_image_is_named(tmp_path):
  with logger_lib.MetricLogger(str(tmp_path)) as log:
    with pytest.raises(ValueError, match=r"image 'grid': expected \[H, W, C\]"):
      log.write_images(0, {'grid': np.zeros((2, 8, 8, 3))})


def test_disabled_logger_writes_nothing(tmp_path):
  workdir = str(tmp_path / 'run')
  log = logger_lib.MetricLogger(workdir, enabled=False)
  log.write_scalars(1, {'loss': 1.0}, stage='ae')
  log.write_images(1, {'grid': np.zeros((4, 4, 3), np.uint8)})
  log.flush()
  log.close()
  assert not os.path.exists(workdir)


def test_logger_does_not_import_torch(tmp_path):
  """tensorboardX imports PyTorch when it is installed (a second or more per process);
  the logger writes numpy only, so it keeps torch out, and torch still imports after."""
  pytest.importorskip('torch')
  script = ('import sys\n'
            'from mipae_jax import logger\n'
            f'log = logger.MetricLogger({str(tmp_path)!r})\n'
            'log.write_scalars(1, {"loss": 0.5})\n'
            'log.close()\n'
            'assert "torch" not in sys.modules, "torch was imported"\n'
            'import torch\n'
            'print(torch.zeros(1).shape)\n')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == 'torch.Size([1])'
  assert [e.summary.value[0].simple_value for e in read_events(str(tmp_path))
          if e.HasField('summary')] == [0.5]


def test_check_finite_names_step_and_terms():
  logger_lib.check_finite(5, {'loss': 1.0, 'recon_loss': jnp.float32(0.1)}, 'ae')
  with pytest.raises(logger_lib.NonFiniteError) as e:
    logger_lib.check_finite(
        17, {'loss': jnp.float32(math.nan), 'sim_loss': 0.5, 'mi_loss': math.inf},
        'ae', checkpoint_dir='/w/checkpoints/ae')
  msg = str(e.value)
  assert isinstance(e.value, FloatingPointError)
  assert 'ae stage step 17' in msg
  assert 'loss=nan' in msg and 'mi_loss=inf' in msg and 'sim_loss' not in msg
  assert 'last good checkpoint in /w/checkpoints/ae is kept' in msg
  assert '--config.optim.lr' in msg
  with pytest.raises(logger_lib.NonFiniteError, match='lstm_optim.lr'):
    logger_lib.check_finite(3, {'lstm_loss': math.nan}, 'lstm')


class FakeClock:
  """Monotonic seconds that tests set by hand."""

  def __init__(self, t=0.0):
    self.t = t

  def __call__(self):
    return self.t


class FakeTTY(io.StringIO):

  def isatty(self):
    return True


def test_progress_lines_off_a_terminal():
  """A batch job's log: the compile time once, then one line per log interval with the
  stage, step/total, the losses, steps/s (from the compiled step on) and time left."""
  clock, out = FakeClock(100.0), io.StringIO()
  metrics = {'loss': jnp.float32(0.5), 'recon_loss_ch0': 0.1, 'mi_loss': -0.25,
             'grad_norm': 3.0, 'critic_loss': np.float64(1.386294), 'epoch': 0}
  with logger_lib.ProgressBar(total=30, desc='ae', interactive=False, stream=out,
                              clock=clock) as bar:
    assert not bar.interactive
    clock.t += 12.34  # Compiling: left out of steps/s.
    bar.compiled(12.34, step=1)
    compiled_at = clock.t
    for step in (10, 20, 30):  # log_every=10: the pipeline updates by 10 from step 0.
      clock.t = compiled_at + (step - 1) * 0.5  # 2 steps/s after the compiled step.
      bar.update(10, metrics)
  assert out.getvalue().splitlines() == [
      'ae: first step compiled in 12.3 s',
      'ae: step 10/30  loss=0.5 mi_loss=-0.25 critic_loss=1.386  2 steps/s  0:00:10 left',
      'ae: step 20/30  loss=0.5 mi_loss=-0.25 critic_loss=1.386  2 steps/s  0:00:05 left',
      'ae: step 30/30  loss=0.5 mi_loss=-0.25 critic_loss=1.386  2 steps/s  0:00:00 left',
  ]


def test_progress_lines_resumed_slow_and_at_the_compiled_step():
  """At the compiled step itself the rate is unknown and left out; a resumed stage
  counts from its start; hours are not wrapped into days."""
  clock, out = FakeClock(), io.StringIO()
  bar = logger_lib.ProgressBar(total=100_000, initial=5000, desc='lstm', interactive=False,
                               stream=out, clock=clock)
  bar.compiled(0.04, step=5001)
  bar.update(1, {'lstm_loss': 0.000123456})
  clock.t += 396.0
  bar.update(99, {'lstm_loss': 2.0})  # 99 steps in 396 s.
  bar.close()
  assert out.getvalue().splitlines() == [
      'lstm: first step compiled in 0.0 s',
      'lstm: step 5001/100000  lstm_loss=0.0001235',
      'lstm: step 5100/100000  lstm_loss=2  0.25 steps/s  105:26:40 left',
  ]


def test_progress_goes_to_stderr_off_a_terminal_and_disabled_is_silent(capsys):
  with logger_lib.ProgressBar(total=10, initial=2, desc='ae') as bar:
    assert not bar.interactive  # pytest captures stderr: not a TTY.
    bar.compiled(1.0, step=3)
    bar.update(4, {'loss': jnp.float32(0.5)})
  captured = capsys.readouterr()
  assert captured.out == ''
  lines = captured.err.splitlines()
  assert lines[0] == 'ae: first step compiled in 1.0 s'
  assert lines[1].startswith('ae: step 6/10  loss=0.5  ') and lines[1].endswith(' left')
  assert len(lines) == 2
  with logger_lib.ProgressBar(total=10, desc='ae', disabled=True) as bar:
    bar.compiled(1.0, step=1)
    bar.update(1, {'loss': 0.5})
  assert capsys.readouterr() == ('', '')


def test_progress_bar_on_a_terminal(monkeypatch):
  """A terminal keeps the tqdm bar (rate and losses in it), with the compile time
  printed once above it and no plain progress lines."""
  fake = FakeTTY()
  monkeypatch.setattr(sys, 'stderr', fake)
  with logger_lib.ProgressBar(total=10, desc='ae') as bar:
    assert bar.interactive
    bar.compiled(2.5, step=1)
    bar.update(5, {'loss': jnp.float32(0.5), 'mi_loss': -0.25})
    bar.update(5, {'loss': jnp.float32(0.25), 'mi_loss': -0.5})
  out = fake.getvalue()
  # tqdm redraws at most every 0.1 s: the last update is the one sure to show.
  assert 'step/s' in out and 'loss=0.25' in out and 'mi_loss=-0.5' in out
  assert '10/10' in out
  assert out.count('ae: first step compiled in 2.5 s\n') == 1
  assert 'ae: step' not in out
  # The mode can be forced either way, whatever stderr is.
  with logger_lib.ProgressBar(total=10, desc='ae', interactive=False) as bar:
    assert not bar.interactive
  fake = FakeTTY()
  with logger_lib.ProgressBar(total=10, desc='ae', interactive=True, stream=fake) as bar:
    bar.update(1, {'loss': 0.5})
  assert '1/10' in fake.getvalue() and 'ae: step' not in fake.getvalue()


def test_batch_job_log_has_progress_lines(tmp_path):
  """`python -m experiments.main ... > log 2>&1`, as a cluster job runs: the log shows
  each stage's compile time once and a progress line every `log_every` steps, each as
  soon as it happens (the test reads them while the run goes on, then stops it before
  the evaluation, which this test does not need)."""
  env = {**os.environ,  # The suite's XLA_FLAGS: its tiny programs are cached.
         'XLA_FLAGS': os.environ.get('XLA_FLAGS', '--xla_backend_optimization_level=0')}
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.main', '--config=tiny',
       f'--workdir={tmp_path}/run', '--config.train.ae_steps=4',
       '--config.train.lstm_steps=2', '--config.train.log_every=2'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  watchdog = threading.Timer(300, proc.kill)  # A hung run fails the test, not the suite.
  watchdog.start()
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line.rstrip('\n'))
      if line.startswith('lstm: step 2/2'):
        break
  finally:
    watchdog.cancel()
    proc.kill()
    proc.wait()
  log = '\n'.join(lines)
  progress = [x.split('  ')[0] for x in lines if re.match(r'(ae|lstm): step \d', x)]
  assert progress == ['ae: step 2/4', 'ae: step 4/4', 'lstm: step 2/2'], log
  line = next(x for x in lines if x.startswith('ae: step 4/4'))
  _, losses, rate, left = line.split('  ')
  assert sorted(x.split('=')[0] for x in losses.split()) == [
      'critic_loss', 'loss', 'mi_loss', 'recon_loss', 'sim_loss'], line
  assert re.fullmatch(r'\S+ steps/s', rate) and left == '0:00:00 left', line
  for stage in ('ae', 'lstm'):
    compiled = [x for x in lines if x.startswith(f'{stage}: first step compiled in ')]
    assert len(compiled) == 1, log
    assert re.fullmatch(rf'{stage}: first step compiled in \d+\.\d s', compiled[0])
