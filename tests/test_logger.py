"""Metric logger (JSON lines + TensorBoard without TensorFlow), NaN stop, progress bar."""

import glob
import io
import json
import math
import os
import struct
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from mipae_jax import logger as logger_lib


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


def test_progress_bar_is_quiet_off_a_terminal(capsys):
  with logger_lib.ProgressBar(total=10, initial=2, desc='ae') as bar:
    assert bar.disabled  # pytest captures stderr: not a TTY.
    bar.update(4, {'loss': jnp.float32(0.5)})
  with logger_lib.ProgressBar(total=10, disabled=True) as bar:
    bar.update(1)
  captured = capsys.readouterr()
  assert captured.out == '' and captured.err == ''


def test_progress_bar_shows_rate_and_losses(monkeypatch):
  class FakeTTY(io.StringIO):

    def isatty(self):
      return True

  fake = FakeTTY()
  monkeypatch.setattr(sys, 'stderr', fake)
  with logger_lib.ProgressBar(total=10, desc='ae') as bar:
    assert not bar.disabled
    bar.update(5, {'loss': jnp.float32(0.5), 'mi_loss': -0.25})
  out = fake.getvalue()
  assert 'step/s' in out and 'loss=0.5' in out and 'mi_loss=-0.25' in out
  assert '5/10' in out
