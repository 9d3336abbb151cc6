"""The run directory: one run at a time, refused when it is not a run, metrics.jsonl kept
whole on resume, a stale LSTM retrained, a diverged or frozen stage said plainly."""

import json
import logging
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mipae_jax import (
  batches,
  config_record,
  errors,
  evaluate,
  logger,
  parallel,
  pipeline,
  runs,
  stages,
  workdir,
)
from mipae_jax.configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


# ----------------------------------------------------------------- 7. One run per workdir.


def test_a_second_run_on_a_held_workdir_is_refused_naming_the_holder(tmp_path):
  run = str(tmp_path / 'run')
  os.makedirs(run)
  with workdir.RunLock(run):
    with pytest.raises(errors.WorkdirError,
                       match=rf'is in use by another run \(pid {os.getpid()} on host '
                             rf'{socket.gethostname()}\)'):
      pipeline.train_and_evaluate(tiny.get_config(), run)
  assert not os.path.exists(os.path.join(run, 'checkpoints'))  # Refused before any step.
  assert not os.path.exists(os.path.join(run, logger.METRICS_FILE))
  with workdir.RunLock(run):  # Released on exit.
    pass


def test_the_lock_of_a_killed_run_is_not_held(tmp_path):
  """SIGKILL leaves run.lock on disk; the kernel has dropped the lock itself."""
  code = ('import os, sys; from mipae_jax import workdir; '
          'workdir.RunLock(sys.argv[1]).acquire(); os.kill(os.getpid(), 9)')
  proc = subprocess.run([sys.executable, '-c', code, str(tmp_path)], cwd=ROOT, timeout=60)
  assert proc.returncode == -9
  assert 'pid' in (tmp_path / workdir.LOCK_FILE).read_text()
  with workdir.RunLock(str(tmp_path)):
    assert str(os.getpid()) in (tmp_path / workdir.LOCK_FILE).read_text()


# ------------------------------------------------------------- 8. Workdirs that are not runs.


def test_a_directory_of_the_users_own_files_is_refused(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  (tmp_path / logger.METRICS_FILE).write_text('{"mine": 1}\n')
  with pytest.raises(errors.WorkdirError,
                     match=r'is not empty and is not a run directory \(no config\.json\); it '
                           r'holds metrics\.jsonl, notes\.txt'):
    pipeline.train_and_evaluate(tiny.get_config(), str(tmp_path))
  assert (tmp_path / logger.METRICS_FILE).read_text() == '{"mine": 1}\n'  # Untouched.
  # A run directory, an empty one and one holding only a study's log are accepted.
  for name, files in (('run', ['config.json', 'x']), ('empty', []), ('study', ['study.log'])):
    d = tmp_path / name
    d.mkdir()
    for f in files:
      (d / f).write_text('{"data": {}, "model": {}, "train": {}}')
    assert workdir.prepare(str(d)) == str(d)


@pytest.mark.parametrize('path,reason', [
    ('', r'--workdir is empty'),
    ('FILE', r'is a file, not a directory'),
    ('/proc/mipae/run', r'cannot be created: No such file or directory \(errno 2\)'),
])
def test_unusable_paths_get_one_line_with_the_os_reason(tmp_path, path, reason):
  if path == 'FILE':
    path = str(tmp_path / 'file')
    open(path, 'w').close()
  with pytest.raises(errors.WorkdirError, match=reason) as e:
    workdir.prepare(path)
  assert '\n' not in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only directories')
def test_a_read_only_workdir_is_refused(tmp_path):
  os.chmod(tmp_path, 0o555)
  try:
    with pytest.raises(errors.WorkdirError, match=r'is not writable: Permission denied'):
      workdir.prepare(str(tmp_path))
  finally:
    os.chmod(tmp_path, 0o755)


# ----------------------------------------------------------------------- 9. metrics.jsonl.


def test_resume_drops_redone_records_and_a_partial_line(tmp_path):
  path = tmp_path / logger.METRICS_FILE
  lines = [{'step': s, 'stage': 'ae', 'loss': 1.0 / s} for s in (1, 2, 3, 4)]
  lines.insert(2, {'step': 2, 'stage': 'eval', 'mig': 0.5})
  path.write_text(''.join(json.dumps(x) + '\n' for x in lines) + '{"step": 5, "sta')
  assert logger.drop_records_after(str(tmp_path), 'ae', 2) == (2, 1, 0)  # 3, 4, partial.
  assert [(x['stage'], x['step']) for x in logger.read_records(str(tmp_path))] == [
      ('ae', 1), ('ae', 2), ('eval', 2)]
  assert logger.drop_records_after(str(tmp_path), 'lstm', 0) == (0, 0, 0)


def test_resume_sets_aside_a_line_that_is_not_a_record_instead_of_deleting_it(tmp_path):
  path = tmp_path / logger.METRICS_FILE
  path.write_text('{"step": 1, "stage": "ae"}\nmy note: lr looked high\n'
                  '{"step": 2, "stage": "ae"}\n')
  assert logger.drop_records_after(str(tmp_path), 'ae', 2) == (0, 0, 1)
  assert [x['step'] for x in logger.read_records(str(tmp_path))] == [1, 2]
  aside = tmp_path / (logger.METRICS_FILE + logger.UNREADABLE_SUFFIX)
  assert aside.read_text() == 'my note: lr looked high\n'


def _step_fn(values):
  """A stand-in stage step: adds 1 to the state; metrics from `values(step)`."""
  def step_fn(state, batch, key):
    del batch, key
    s = int(state['step']) + 1
    return {'step': state['step'] + 1, 'w': state['w'] + 1.0}, values(s)
  return step_fn


def _run(tmp_path, num_steps, values, **train):
  config = tiny.get_config()
  config.train.update(train)
  init = {'step': jnp.zeros((), jnp.int32), 'w': jnp.zeros(3)}
  return stages.run_stage(config, str(tmp_path), 'ae', init, _step_fn(values),
                          batches.KeyedBatches(lambda key: None, jax.random.key(0)),
                          jax.random.key(1), num_steps, parallel.local_mesh())


def test_a_resumed_run_writes_every_step_once_and_every_line_parses(tmp_path):
  values = lambda s: {'loss': jnp.float32(1.0 / s), 'grad_norm': jnp.float32(1.0)}
  _run(tmp_path, 4, values, ckpt_every=2)
  # Killed after logging step 5 (saved at 4), mid-way through writing step 6's line.
  with open(tmp_path / logger.METRICS_FILE, 'a') as f:
    f.write(json.dumps({'step': 5, 'stage': 'ae', 'loss': 0.2}) + '\n{"step": 6, "st')
  result = _run(tmp_path, 7, values, ckpt_every=2)
  assert result.steps_run == 3
  records = logger.read_records(str(tmp_path))  # Raises on a glued or partial line.
  assert [x['step'] for x in records] == [1, 2, 3, 4, 5, 6, 7]


# ---------------------------------------------------------------- 13. Diverged, or frozen.


def test_divergence_before_any_save_says_no_checkpoint_was_saved(tmp_path):
  values = lambda s: {'loss': jnp.float32(np.nan), 'grad_norm': jnp.float32(1.0)}
  with pytest.raises(logger.NonFiniteError) as e:
    _run(tmp_path, 3, values, ckpt_every=2)
  msg = str(e.value)
  assert 'ae stage step 1: loss=nan' in msg
  assert 'No checkpoint of the ae stage was saved yet' in msg and 'nothing to resume' in msg
  assert 'is kept' not in msg


def test_divergence_after_a_save_names_the_kept_step(tmp_path):
  values = lambda s: {'loss': jnp.float32(np.nan if s == 3 else 1.0)}
  with pytest.raises(logger.NonFiniteError, match=r'last good checkpoint \(step 2\) in .* is '
                                                  r'kept'):
    _run(tmp_path, 4, values, ckpt_every=2)


def test_a_gradient_norm_exactly_zero_for_a_whole_interval_warns(tmp_path, caplog):
  values = lambda s: {'loss': jnp.float32(1.0), 'grad_norm': jnp.float32(0.0),
                      'critic_grad_norm': jnp.float32(0.0 if s < 3 else 0.5)}
  with caplog.at_level(logging.WARNING, logger='mipae_jax.stages'):
    _run(tmp_path, 4, values, ckpt_every=4, log_every=2)
  warnings = [r.getMessage() for r in caplog.records if 'exactly 0' in r.getMessage()]
  # Steps 1-2: both zero; steps 3-4: only grad_norm (critic_grad_norm moved at step 3).
  assert warnings == [
      'ae: critic_grad_norm, grad_norm were exactly 0 at every step from 1 to 2: those '
      'parameters are not training (a zero loss weight, a detached term or a dead network?).',
      'ae: grad_norm was exactly 0 at every step from 3 to 4: those parameters are not '
      'training (a zero loss weight, a detached term or a dead network?).']


def test_a_gradient_norm_zero_at_one_step_only_does_not_warn(tmp_path, caplog):
  values = lambda s: {'loss': jnp.float32(1.0), 'grad_norm': jnp.float32(s % 2)}
  with caplog.at_level(logging.WARNING, logger='mipae_jax.stages'):
    _run(tmp_path, 4, values, ckpt_every=4, log_every=2)
  assert 'exactly 0' not in caplog.text


# ------------------------------------------------------------------------ 6. Stale LSTM.


def test_more_autoencoder_training_retrains_the_lstm_and_evaluation_refuses_a_stale_pair(
    tmp_path, caplog):
  config = tiny.get_config()
  run, straight = str(tmp_path / 'run'), str(tmp_path / 'straight')
  os.makedirs(run)
  config_record.record_config(run, config)
  pipeline.train_autoencoder(config, run)
  old = pipeline.train_lstm(config, run)
  config.train.ae_steps = 3
  ae = pipeline.train_autoencoder(config, run)
  assert ae.steps_run == 1
  # Evaluation refuses the old LSTM with the new autoencoder (before any compute)...
  with pytest.raises(errors.WorkdirError,
                     match=r'LSTM of .* \(step 2\) is stale: its checkpoint was trained on '
                           r'the autoencoder at step 2 .* now at step 3 .*--allow_stale_lstm'):
    evaluate.evaluate_workdir(run)
  assert runs.restore_lstm(config, run, ae.state, allow_stale=True) is not None
  # ... and the LSTM stage retrains it from scratch, setting the old checkpoints aside.
  with caplog.at_level(logging.WARNING, logger='mipae_jax.stages'):
    new = pipeline.train_lstm(config, run)
  assert new.steps_run == 2 and not leaves_equal(new.state, old.state)
  assert 'retraining the stage from scratch' in caplog.text
  assert os.path.isdir(os.path.join(run, 'checkpoints', 'lstm.stale-1'))
  # Bit-identical to a run that trained the autoencoder 3 steps before its LSTM.
  pipeline.train_autoencoder(config, straight)
  reference = pipeline.train_lstm(config, straight)
  assert leaves_equal(new.state, reference.state)
  assert runs.restore_lstm(config, run, ae.state) is not None  # Now a matching pair.


def test_a_resume_with_fewer_steps_than_reached_is_refused_and_the_record_kept(tmp_path):
  """Issue: rerunning a finished run with ae_steps=1 evaluated the step-2 networks and
  rewrote config.json to say 1. It is refused, naming the reached step, and the record
  still says what was trained."""
  config = tiny.get_config()
  run = str(tmp_path / 'run')
  os.makedirs(run)
  config_record.record_config(run, config)
  pipeline.train_autoencoder(config, run)
  before = open(os.path.join(run, 'config.json')).read()
  shorter = tiny.get_config()
  shorter.train.ae_steps = 1
  with pytest.raises(errors.ConfigError,
                     match=r'config\.train\.ae_steps=1 is below step 2, which this run\'s '
                           r'autoencoder has reached .*--config\.train\.ae_steps=2'):
    pipeline.train_and_evaluate(shorter, run)
  assert open(os.path.join(run, 'config.json')).read() == before
  assert not os.path.exists(os.path.join(run, 'eval'))
