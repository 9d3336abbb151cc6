"""Full and read-only disks, deleted files and foreign folders: one line each, nothing lost.

Each test here failed on the code before its fix (a traceback, or a message that said the
wrong thing) and asserts the one line a user now gets.
"""

import errno
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mipae_jax import (
  batches,
  checkpoint,
  cli,
  config_record,
  errors,
  logger,
  parallel,
  pipeline,
  stages,
)
from mipae_jax import workdir as workdir_lib
from mipae_jax.configs import tiny
from mipae_jax.data import preview, tfds_builders, tfds_source

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_line_exit(capsys, fn, *args) -> tuple[int, str]:
  with pytest.raises(SystemExit) as e:
    fn(*args)
  err = capsys.readouterr().err.strip()
  assert '\n' not in err and 'Traceback' not in err, err
  return e.value.code, err


# ----------------------------------------------------------------- Full, read-only disks.


def test_a_full_disk_failing_the_log_close_does_not_hide_the_failed_save(tmp_path,
                                                                         monkeypatch):
  """The run stage's cleanup closes the TensorBoard writer, which flushes onto the same
  full disk: its OSError used to replace the CheckpointError that says what is kept."""
  def save(self, step, state, metadata=None, wait=False):
    raise checkpoint.CheckpointError(f'saving checkpoint step {step} failed (OS error 28)')

  def close(self):
    raise ENOSPC

  monkeypatch.setattr(checkpoint.CheckpointStore, 'save', save)
  monkeypatch.setattr(logger.MetricLogger, 'close', close)
  config = tiny.get_config()
  init = {'w': jnp.zeros(3)}
  step_fn = lambda state, batch, key: ({'w': state['w'] + 1}, {'loss': jnp.float32(1.0)})
  with pytest.raises(checkpoint.CheckpointError, match='saving checkpoint step 1 failed'):
    stages.run_stage(config, str(tmp_path), 'ae', init, step_fn,
                     batches.KeyedBatches(lambda key: None, jax.random.key(0)),
                     jax.random.key(1), 2, parallel.local_mesh())


def test_close_all_closes_every_resource_and_raises_only_when_nothing_else_is_raised():
  closed = []

  class Ok:
    def close(self):
      closed.append('ok')

  class Full:
    def close(self):
      closed.append('full')
      raise ENOSPC

  with pytest.raises(OSError, match='No space left'):
    stages.close_all(Full(), Ok())
  assert closed == ['full', 'ok']
  with pytest.raises(KeyError, match='the first error'):
    try:
      raise KeyError('the first error')
    finally:
      stages.close_all(Full(), Ok())


def test_a_tool_prints_a_disk_error_in_one_line_naming_the_path(tmp_path, capsys):
  cli.writes_to(str(tmp_path))

  def full():  # A failed write or flush: the OS error names no file.
    raise ENOSPC

  code, err = _one_line_exit(capsys, cli.guarded, full)
  assert code == 1
  assert err.startswith(f'DiskError: could not write {tmp_path}: No space left on device. '
                        'To fix: free space on that disk')
  assert 'what was saved before is kept' in err

  def read_only():  # Wrapped by a library, as tensorboardX and matplotlib do.
    try:
      raise OSError(errno.EROFS, 'Read-only file system', '/mnt/ro/run/eval')
    except OSError as e:
      raise RuntimeError('could not write the summary') from e

  code, err = _one_line_exit(capsys, cli.guarded, read_only)
  assert code == 2 and 'could not write /mnt/ro/run/eval: Read-only file system' in err

  def bug():  # Any other OS error is a bug: its traceback is kept.
    raise FileNotFoundError(errno.ENOENT, 'No such file or directory', '/x')

  with pytest.raises(FileNotFoundError):
    cli.guarded(bug)


def test_preview_onto_a_file_is_refused_in_one_line(tmp_path, capsys):
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('mine\n')
  for out, reason in ((a_file / 'preview', 'Not a directory'), (a_file, 'File exists')):
    code, err = _one_line_exit(capsys, preview.main, [
        '--dataset=moving_dsprites', '--num_videos=1', f'--out={out}'])
    assert code == 2 and f'could not write {out}: {reason}' in err, err
  assert a_file.read_text() == 'mine\n'


def test_prepare_under_a_file_is_refused_in_one_line(tmp_path, capsys):
  from mipae_jax.data import prepare

  a_file = tmp_path / 'notes.txt'
  a_file.write_text('mine\n')
  code, err = _one_line_exit(capsys, prepare.main, [
      'mipae-prepare', '--config=tiny', f'--data_dir={a_file}/tfds', '--train_videos=2',
      '--test_videos=2'])
  assert code == 2 and 'DiskError: could not write' in err and 'Not a directory' in err


def test_a_prepared_dataset_deleted_during_a_run_is_named(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  tfds_builders.build(tfds_builders.MipaeMovingDsprites, 'tiny', data_dir)
  import tensorflow_datasets as tfds
  path = os.path.join(data_dir, 'mipae_moving_dsprites', 'tiny')
  splits = tfds.data_source('mipae_moving_dsprites/tiny', data_dir=data_dir)
  train, test = (tfds_source.Records(splits[s], path, 'mipae-prepare ...')
                 for s in ('train', 'test'))
  assert train[0]['video'].shape == (4, 64, 64, 3)  # Training reads; then it is deleted.
  shutil.rmtree(data_dir)
  with pytest.raises(errors.DataNotFoundError,
                     match=r'record 1 of the prepared dataset at .*tiny cannot be read .*the '
                           r'dataset is gone \(deleted or moved during the run\)\. Put it '
                           r'back, or build it again'):
    test[1]  # The evaluation opens the test split.


# -------------------------------------------------------------------- Misleading words.


def test_a_folder_with_a_foreign_config_json_is_not_a_run_and_gets_no_lock(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'theme': 'dark', 'font': 12}))
  (tmp_path / 'holiday.jpg').write_bytes(b'\xff\xd8')
  with pytest.raises(errors.WorkdirError,
                     match=r'is not a run directory: its config\.json is not a config that '
                           r'mipae-train recorded \(no data/model/train sections\)'):
    pipeline.train_and_evaluate(tiny.get_config(), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['config.json', 'holiday.jpg']


def test_a_run_whose_record_was_moved_aside_is_accepted_again(tmp_path):
  for name in ('checkpoints', 'tensorboard', 'eval'):
    (tmp_path / name).mkdir()
  (tmp_path / 'metrics.jsonl').write_text('')
  (tmp_path / 'config.json.damaged').write_text('{"data": {')
  assert workdir_lib.prepare(str(tmp_path)) == str(tmp_path)
  (tmp_path / 'holiday.jpg').write_bytes(b'\xff\xd8')  # Not a run's file: refused.
  with pytest.raises(errors.WorkdirError, match='is not empty and is not a run directory'):
    workdir_lib.prepare(str(tmp_path))


def test_checkpoint_files_deleted_are_named_missing_not_another_layout(tmp_path):
  state = {'params': {'w': np.arange(4, dtype=np.float32)},
           'batch_stats': {'mean': np.ones(2, np.float32)}}
  with checkpoint.CheckpointStore(str(tmp_path), 'ae') as store:
    store.save(1, state)
  state_dir = tmp_path / 'checkpoints' / 'ae' / '1' / 'state'
  for name in os.listdir(state_dir):
    if name == 'd' or name.startswith('ocdbt.'):
      shutil.rmtree(state_dir / name)
  with checkpoint.CheckpointStore(str(tmp_path), 'ae', enabled=False) as store, \
       pytest.raises(checkpoint.CheckpointError) as e:
    store.restore(jax.eval_shape(lambda: state))
  msg = str(e.value)
  assert 'MissingFilesError' in msg and 'has lost files since it was saved' in msg
  assert 'd/' in msg and 'Files of these checkpoints are missing: put them back' in msg
  assert 'intact' not in msg


def test_a_refused_data_path_leaves_no_config_record(tmp_path):
  """Following the refusal's advice (the right path) must not then be refused as a run
  of another config."""
  config = tiny.get_config()
  config.data.name = 'moving_mnist'
  config.data.path = str(tmp_path / 'mnist.npz')
  (tmp_path / 'mnist.npz').write_text('not an archive')
  run = tmp_path / 'run'
  with pytest.raises(errors.DataError, match='mnist.npz'):
    pipeline.train_and_evaluate(config, str(run))
  assert not (run / config_record.CONFIG_FILE).exists()
  assert set(os.listdir(run)) <= workdir_lib.EARLY_FILES
