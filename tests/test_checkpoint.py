"""Checkpoint store: exact round trip, keep-last-N, atomicity, corruption, write
failures, and the workdir's config record.

The state under test is the real `AEState` of the tiny config (its structure, static
`tx` and dtypes come from `jax.eval_shape(create_train_state)`), filled with random
values: a round trip of random values proves more than one of zeros, and skips the
~20 s of initialising the networks on a busy CPU.
"""

import errno
import functools
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mipae_jax import checkpoint as ckpt
from mipae_jax import config_record
from mipae_jax.configs import tiny
from mipae_jax.train import AEState, create_train_state

# A restore that hits a corrupted array leaves Orbax's reads of the other arrays
# un-awaited; Python reports them when they are collected. Expected here, harmless.
pytestmark = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def config():
  return tiny.get_config()


@pytest.fixture(scope='module')
def abstract(config):
  return jax.eval_shape(functools.partial(create_train_state, config),
                        jax.random.key(0))


def random_state(abstract_state, seed):
  rng = np.random.default_rng(seed)

  def fill(x):
    if np.issubdtype(x.dtype, np.floating):
      return jnp.asarray(rng.standard_normal(x.shape).astype(x.dtype))
    return jnp.asarray(rng.integers(0, 1000, x.shape).astype(x.dtype))

  return jax.tree.map(fill, abstract_state)


@pytest.fixture(scope='module')
def states(abstract):
  """Distinct states for steps 1..4."""
  return {i: random_state(abstract, i).replace(step=jnp.int32(i)) for i in range(1, 5)}


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def step_dir(workdir, step, stage='ae'):
  return os.path.join(workdir, 'checkpoints', stage, str(step))


def largest_file(directory):
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


def save_steps(workdir, states, steps, keep=3):
  with ckpt.CheckpointStore(workdir, 'ae', keep=keep) as store:
    for s in steps:
      store.save(s, states[s], {'data_iterator': {'epoch': s}})


# ------------------------------------------------------------------ Round trip.


def test_round_trip_is_exact_and_usable(tmp_path, abstract, states):
  workdir = str(tmp_path)
  store = ckpt.CheckpointStore(workdir, 'ae', keep=3)
  assert store.latest_step() is None and store.all_steps() == []
  store.save(3, states[3], {'data_iterator': {'epoch': 2, 'index': 17}})
  assert store.latest_step() == 3
  store.close()

  store = ckpt.CheckpointStore(workdir, 'ae')  # A new process would do this.
  restored, meta, step = store.restore(abstract)
  store.close()
  assert step == 3
  assert meta['data_iterator'] == {'epoch': 2, 'index': 17}
  assert meta['step'] == 3 and meta['stage'] == 'ae' and meta['wall_time'] > 0
  # Every leaf: parameters, both Adam states, BatchNorm statistics, all step counters.
  assert_trees_equal(restored, states[3])
  assert isinstance(restored, AEState)
  assert all(x.devices() == {jax.local_devices()[0]} for x in jax.tree.leaves(restored))
  # Static fields (tx, apply_fn) come from the abstract target: the state still trains.
  grads = jax.tree.map(jnp.ones_like, restored.model.params)
  updated = restored.model.apply_gradients(grads=grads)
  assert int(updated.step) == int(states[3].model.step) + 1
  assert not np.array_equal(
      jax.tree.leaves(updated.params)[0], jax.tree.leaves(restored.model.params)[0])
  with open(os.path.join(workdir, 'checkpoints', 'ae', ckpt.LAST_GOOD)) as f:
    assert f.read().strip() == '3'


def test_keeps_last_n_and_async_save_is_confirmed(tmp_path, abstract, states):
  workdir = str(tmp_path)
  store = ckpt.CheckpointStore(workdir, 'ae', keep=2)
  for s in (1, 2, 3):
    store.save(s, states[s])
  store.save(4, states[4], wait=False)
  assert store.latest_step() == 4  # Waits for the save, then confirms it.
  assert store.all_steps() == [3, 4]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints', 'ae'))) == [
      '3', '4', ckpt.LAST_GOOD]
  restored, _, step = store.restore(abstract, step=3)
  assert step == 3
  assert_trees_equal(restored, states[3])
  store.close()


def test_resume_from_earlier_step_replaces_later_ones(tmp_path, abstract, states,
                                                       caplog):
  workdir = str(tmp_path)
  save_steps(workdir, states, (1, 2, 3))
  # LAST_GOOD behind the newest step: the process died between Orbax's rename and
  # the confirmation. That step is not trusted.
  ckpt.atomic_write_text(os.path.join(workdir, 'checkpoints', 'ae', ckpt.LAST_GOOD),
                         '2\n')
  store = ckpt.CheckpointStore(workdir, 'ae')
  with caplog.at_level(logging.WARNING, logger='mipae_jax.checkpoint'):
    assert store.latest_step() == 2
    _, _, step = store.restore(abstract)
  assert step == 2
  assert 'unconfirmed checkpoint step(s) [3]' in caplog.text
  # The resumed run reaches step 3 again: the stale one is replaced, not skipped.
  store.save(3, states[4])
  restored, _, step = store.restore(abstract)
  assert step == 3
  assert_trees_equal(restored, states[4])
  store.close()


# ------------------------------------------------------------------ Atomicity.


def test_incomplete_saves_are_ignored_and_cleaned(tmp_path, abstract, states):
  workdir = str(tmp_path)
  save_steps(workdir, states, (1, 2))
  root = os.path.join(workdir, 'checkpoints', 'ae')
  # What a save killed before Orbax's rename leaves (local filesystems).
  shutil.copytree(os.path.join(root, '2'), os.path.join(root, '3.orbax-checkpoint-tmp'))
  # What a save killed before the commit file leaves (commit-file filesystems).
  shutil.copytree(os.path.join(root, '2'), os.path.join(root, '4'))
  os.remove(os.path.join(root, '4', 'commit_success.txt'))
  ckpt.atomic_write_text(os.path.join(root, ckpt.LAST_GOOD), '4\n')  # Even if named.
  store = ckpt.CheckpointStore(workdir, 'ae')
  assert store.all_steps() == [1, 2]
  assert store.latest_step() == 2
  _, _, step = store.restore(abstract)
  assert step == 2
  assert not os.path.exists(os.path.join(root, '3.orbax-checkpoint-tmp'))
  with pytest.raises(ckpt.CheckpointError, match='no complete checkpoint for step 4'):
    store.restore(abstract, step=4)
  store.close()


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path, abstract, states):
  """A real SIGKILL at the worst moment: every file of step 2 written, not renamed."""
  workdir = str(tmp_path)
  script = textwrap.dedent(f"""
      import functools, sys, time
      import jax, jax.numpy as jnp
      from orbax.checkpoint._src.path import atomicity
      from mipae_jax.configs import tiny
      from mipae_jax import checkpoint as ckpt
      from mipae_jax.train import create_train_state
      abstract = jax.eval_shape(functools.partial(create_train_state, tiny.get_config()),
                                jax.random.key(0))
      state = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), abstract)
      store = ckpt.CheckpointStore({workdir!r}, 'ae')
      store.save(1, state)
      async def hang(self):
        print('WRITTEN', flush=True)
        time.sleep(600)
      atomicity.AtomicRenameTemporaryPath.finalize = hang
      store.save(2, state)
  """)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO}
  proc = subprocess.Popen([sys.executable, '-c', script], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    line = proc.stdout.readline()
    assert line.strip() == 'WRITTEN', line
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait(timeout=30)
  root = os.path.join(workdir, 'checkpoints', 'ae')
  assert '2.orbax-checkpoint-tmp' in os.listdir(root)
  store = ckpt.CheckpointStore(workdir, 'ae')
  assert store.all_steps() == [1]
  restored, _, step = store.restore(abstract)
  assert step == 1
  assert_trees_equal(restored, jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype),
                                            abstract))
  store.save(2, states[2])  # The run goes on and saves step 2 again.
  assert store.all_steps() == [1, 2]
  store.close()


# ------------------------------------------------------------------ Corruption.


def corrupt(path, mode):
  with open(path, 'rb') as f:
    data = f.read()
  if mode == 'truncate':
    data = data[:len(data) // 2]
  else:  # One flipped bit in the middle: the file still decodes.
    data = bytearray(data)
    data[len(data) // 2] ^= 0x10
    data = bytes(data)
  with open(path, 'wb') as f:
    f.write(data)


@pytest.mark.parametrize('mode', ['truncate', 'bitflip'])
def test_restore_falls_back_past_corrupt_newest(tmp_path, abstract, states, caplog,
                                                mode):
  workdir = str(tmp_path)
  save_steps(workdir, states, (1, 2, 3))
  corrupt(largest_file(os.path.join(step_dir(workdir, 3), 'state')), mode)
  store = ckpt.CheckpointStore(workdir, 'ae')
  with caplog.at_level(logging.WARNING, logger='mipae_jax.checkpoint'):
    restored, meta, step = store.restore(abstract)
  assert step == 2 and meta['data_iterator'] == {'epoch': 2}
  assert_trees_equal(restored, states[2])
  assert 'Checkpoint step 3' in caplog.text and 'falling back' in caplog.text
  # One line each (TensorStore's errors carry a many-line spec of the file it read).
  # Only the store's own records: asyncio may log, whenever it collects it, a failed read
  # future left by an earlier test ("exception was never retrieved").
  ours = [r for r in caplog.records if r.name.startswith('mipae_jax')]
  assert ours and all('\n' not in r.getMessage() for r in ours)

  # An explicit step does not fall back: it names the step and where it failed.
  with pytest.raises(ckpt.CheckpointError) as e:
    store.restore(abstract, step=3)
  msg = str(e.value)
  assert 'checkpoint step 3' in msg and step_dir(workdir, 3) in msg
  if mode == 'truncate':
    assert os.path.join(step_dir(workdir, 3), 'state') in msg  # TensorStore's file.
  else:
    assert 'do not match the digest' in msg
  store.close()


def test_corrupt_metadata_and_all_steps_bad(tmp_path, abstract, states):
  workdir = str(tmp_path)
  save_steps(workdir, states, (1, 2))
  with open(os.path.join(step_dir(workdir, 2), 'metadata', 'metadata'), 'w') as f:
    f.write('{"step": 2, "wall')
  corrupt(largest_file(os.path.join(step_dir(workdir, 1), 'state')), 'truncate')
  store = ckpt.CheckpointStore(workdir, 'ae')
  with pytest.raises(ckpt.CheckpointError) as e:
    store.restore(abstract)
  msg = str(e.value)
  assert os.path.join(workdir, 'checkpoints', 'ae') in msg
  assert 'step 2: JSONDecodeError' in msg and 'step 1:' in msg
  assert 'new --workdir' in msg
  store.close()


def test_restore_against_other_structure_fails(tmp_path, config, states):
  workdir = str(tmp_path)
  save_steps(workdir, states, (1,))
  other = tiny.get_config()
  other.model.nf = 4  # Same tree, other shapes.
  abstract_other = jax.eval_shape(functools.partial(create_train_state, other),
                                  jax.random.key(0))
  store = ckpt.CheckpointStore(workdir, 'ae')
  with pytest.raises(ckpt.CheckpointError, match='checkpoint step 1') as err:
    store.restore(abstract_other, step=1)
  assert 'LayoutMismatchError' not in str(err.value)  # Same names: not a layout change.
  store.close()


def test_other_parameter_layout_is_named_not_called_damaged(tmp_path, abstract, states):
  """A checkpoint from another parameter layout (say, one whose convolutions before a
  BatchNorm still had biases) is reported as intact, naming the leaves that differ."""
  workdir = str(tmp_path)
  old = states[1]
  params = {**old.model.params, 'decoder': {**old.model.params['decoder'],
                                            'upc1_conv': {**old.model.params['decoder'][
                                                'upc1_conv'], 'bias': jnp.zeros(3)}}}
  with ckpt.CheckpointStore(workdir, 'ae') as store:
    store.save(1, old.replace(model=old.model.replace(params=params)))
  store = ckpt.CheckpointStore(workdir, 'ae')
  with pytest.raises(ckpt.CheckpointError) as err:
    store.restore(abstract)
  store.close()
  message = str(err.value)
  assert 'not in this model: model.params.decoder.upc1_conv.bias' in message
  assert 'missing from the checkpoint: none' in message
  assert 'intact' in message and 'damaged' not in message
  assert os.path.isdir(step_dir(workdir, 1))  # Nothing was moved or deleted.


# ------------------------------------------------------------------ Write failures.


def test_real_write_failure_keeps_previous(tmp_path, abstract, states):
  """A real failed write as root: the file-size limit makes the OS refuse (EFBIG),
  as a full disk would."""
  workdir = str(tmp_path)
  store = ckpt.CheckpointStore(workdir, 'ae')
  store.save(1, states[1])
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # State: ~600 kB.
  try:
    with pytest.raises(ckpt.CheckpointError) as e:
      store.save(2, states[2])
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, old_handler)
  msg = str(e.value)
  assert 'saving checkpoint step 2' in msg and store.directory in msg
  assert 'free disk space' in msg and 'step 1, intact' in msg
  assert '(OS error 27: File too large)' in msg
  assert len(msg.splitlines()) == 2, msg  # The failure and the fix; no TensorStore spec.
  store.close()
  store = ckpt.CheckpointStore(workdir, 'ae')
  assert store.all_steps() == [1]
  restored, _, step = store.restore(abstract)
  assert step == 1
  assert_trees_equal(restored, states[1])
  store.close()


def test_disk_full_error_message(tmp_path, abstract, states, monkeypatch):
  workdir = str(tmp_path)
  store = ckpt.CheckpointStore(workdir, 'ae')
  store.save(1, states[1])

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(store._manager, 'save', full)
  with pytest.raises(ckpt.CheckpointError,
                     match=r'(?s)saving checkpoint step 2.*No space left.*free disk'):
    store.save(2, states[2])
  monkeypatch.undo()
  _, _, step = store.restore(abstract)
  assert step == 1
  store.close()


def test_unwritable_workdir(tmp_path, states):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(
      ckpt.CheckpointError,
      match='(?s)cannot create the checkpoint directory .*NotADirectoryError.*To fix'):
    ckpt.CheckpointStore(str(blocker), 'ae')


def test_disabled_store_writes_nothing(tmp_path, abstract, states):
  workdir = str(tmp_path / 'run')
  store = ckpt.CheckpointStore(workdir, 'ae', enabled=False)
  store.save(1, states[1])
  assert store.latest_step() is None and store.all_steps() == []
  assert not os.path.exists(workdir)
  # A disabled store (process 1) reads what process 0 writes, even if it was opened
  # before process 0 created the directory.
  save_steps(workdir, states, (1, 2))
  assert store.all_steps() == [1, 2]
  restored, _, step = store.restore(abstract)
  assert step == 2
  assert_trees_equal(restored, states[2])
  store.close()


def test_bad_arguments(tmp_path, states):
  with pytest.raises(ValueError, match='stage must be one of'):
    ckpt.CheckpointStore(str(tmp_path), 'critic')
  store = ckpt.CheckpointStore(str(tmp_path), 'ae')
  with pytest.raises(ValueError, match='reserved'):
    store.save(1, states[1], {'step': 5})
  with pytest.raises(ValueError, match='JSON'):
    store.save(1, states[1], {'x': object()})
  store.close()


# ------------------------------------------------------------------ Config record.


def test_config_record_and_check(tmp_path, config):
  workdir = str(tmp_path)
  assert config_record.check_config(workdir, config) is False  # Nothing recorded yet.
  path = config_record.record_config(workdir, config)
  with open(path) as f:
    assert json.load(f) == json.loads(config.to_json())
  assert config_record.check_config(workdir, tiny.get_config()) is True


def test_config_mismatch_lists_fields(tmp_path, config):
  workdir = str(tmp_path)
  config_record.record_config(workdir, config)
  other = tiny.get_config()
  other.model.nf = 16
  other.optim.lr = 1e-3
  other.train.ae_steps = 10  # Allowed: listed nowhere.
  with pytest.raises(config_record.ConfigMismatchError) as e:
    config_record.check_config(workdir, other)
  msg = str(e.value)
  assert 'model.nf: 8 -> 16' in msg
  assert 'optim.lr: 0.002 -> 0.001' in msg
  assert 'ae_steps' not in msg.split('Fields that may change')[0]
  assert 'new --workdir' in msg and 'same config' in msg


def test_resumable_fields_allowed(tmp_path, config):
  workdir = str(tmp_path)
  config_record.record_config(workdir, config)
  other = tiny.get_config()
  other.train.ae_steps = 1000
  other.train.lstm_steps = 500
  other.train.log_every = 10
  other.train.ckpt_every = 50
  other.train.keep_checkpoints = 1
  other.eval.seed = 7
  other.eval.mig_samples = 10
  assert config_record.check_config(workdir, other) is True
  # Only what was allowed: an explicit empty allow-list refuses the same change.
  with pytest.raises(config_record.ConfigMismatchError, match='eval.seed: 1234 -> 7'):
    config_record.check_config(workdir, other, allowed=())


def test_restores_straight_into_the_targets_sharding(tmp_path, abstract, states):
  """Training restores into the mesh's replicated sharding: every leaf arrives on every
  device of the mesh, exactly, with no placement step after the restore. A state saved
  from that sharding is written once (one replica), and restores to one device too."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  devices = jax.devices()
  assert len(devices) == 4  # tests/conftest.py: 4 CPU devices.
  replicated = NamedSharding(Mesh(np.array(devices), ('batch',)), PartitionSpec())
  on_mesh = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), tree)
  workdir = str(tmp_path)
  with ckpt.CheckpointStore(workdir, 'ae') as store:
    store.save(1, states[1])
    store.save(2, jax.device_put(states[2], replicated))
  store = ckpt.CheckpointStore(workdir, 'ae')
  for step in (1, 2):
    restored, _, _ = store.restore(on_mesh(abstract), step=step)
    assert all(x.sharding == replicated for x in jax.tree.leaves(restored))
    assert_trees_equal(restored, states[step])
  restored, _, _ = store.restore(abstract, step=2)
  assert all(x.devices() == {jax.local_devices()[0]} for x in jax.tree.leaves(restored))
  assert_trees_equal(restored, states[2])
  store.close()
  files = [p for p in (tmp_path / 'checkpoints' / 'ae' / '2' / 'state').rglob('*')
            if p.is_file()]
  size = sum(p.stat().st_size for p in files)
  one_copy = sum(x.nbytes for x in jax.tree.leaves(states[2]))
  assert size < 2 * one_copy, (size, one_copy)  # Not four replicas.


def test_relative_workdir(tmp_path, abstract, states, monkeypatch):
  """`--workdir=runs/x` is how people type it; Orbax itself needs absolute paths."""
  monkeypatch.chdir(tmp_path)
  store = ckpt.CheckpointStore('runs/x', 'ae')
  store.save(1, states[1])
  store.close()
  restored, _, step = ckpt.CheckpointStore('runs/x', 'ae', enabled=False).restore(abstract)
  assert step == 1
  assert_trees_equal(restored, states[1])
  assert os.path.isdir(tmp_path / 'runs' / 'x' / 'checkpoints' / 'ae' / '1')
