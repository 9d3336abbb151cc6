"""Faults a long run meets, proven on the tiny config in real subprocesses.

* SIGKILL at random moments, some timed to land inside a checkpoint save: every
  restart resumes from the last confirmed checkpoint (never a partial one, never more
  than one checkpoint interval back) and the run ends bit-identical to one never killed.
* SIGTERM / SIGINT: a checkpoint at the current step, a message, exit 128 + signal.
* Bad inputs not covered elsewhere (see docs/reliability.md).

CI runs 3 SIGKILLs; `MIPAE_FULL_RELIABILITY=1` runs 12 (over a 40-step run).
`MIPAE_KILL_SEED=N` changes the random kill times (the seed is printed on failure).
Related tests elsewhere: tests/test_checkpoint.py (corrupt/truncated checkpoints, write
failures, SIGKILL inside a save of the store alone), tests/test_pipeline.py (in-process
resume, NaN stop), tests/test_configuration.py and tests/test_data_*.py (bad inputs).
"""

import json
import logging
import os
import random
import signal
import time

import jax
import ml_collections
import numpy as np
import pytest
from helpers.launch import Worker

from mipae_jax import checkpoint, config_record, distributed, evaluate, pipeline, train
from mipae_jax.configs import tiny
from mipae_jax.data import moving_mnist, mpi3d

FULL = os.environ.get('MIPAE_FULL_RELIABILITY') == '1'
NUM_KILLS = 12 if FULL else 3
STEPS = 40 if FULL else 12  # Autoencoder steps of every worker run.
EVERY = 2                   # train.ckpt_every.
DELAY = 0.05                # Seconds each worker sleeps after a step (spreads the kills).
SEED = int(os.environ.get('MIPAE_KILL_SEED', '0'))
RUN_TIMEOUT = 300


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('xla_cache'))


@pytest.fixture(scope='module')
def reference(tmp_path_factory, cache_dir):
  """Final leaves of an uninterrupted worker run."""
  d = tmp_path_factory.mktemp('reference')
  w = Worker(d / 'run', d / 'final.npz', ae_steps=STEPS, ckpt_every=EVERY,
             cache_dir=cache_dir)
  assert w.wait(RUN_TIMEOUT) == 0, w.report()
  return load_leaves(d / 'final.npz')


def load_leaves(path):
  with np.load(path) as f:
    return [f[f'arr_{i}'] for i in range(len(f.files))]


def assert_bit_identical(got, want):
  assert len(got) == len(want)
  for i, (a, b) in enumerate(zip(got, want, strict=True)):
    assert a.dtype == b.dtype and a.shape == b.shape, i
    assert np.array_equal(a, b), f'leaf {i} differs by {np.abs(a - b).max()}'


class Ckpts:
  """What a killed run left in `workdir/checkpoints/ae`, read from the files alone."""

  def __init__(self, workdir):
    self.dir = os.path.join(workdir, 'checkpoints', 'ae')

  def names(self):
    try:
      return os.listdir(self.dir)
    except FileNotFoundError:
      return []

  def tmp(self):
    return sorted(n for n in self.names() if 'tmp' in n and n != checkpoint.LAST_GOOD)

  def complete(self):
    return sorted(int(n) for n in self.names() if n.isdigit()
                  and os.path.isfile(os.path.join(self.dir, n, 'commit_success.txt')))

  def last_good(self):
    try:
      with open(os.path.join(self.dir, checkpoint.LAST_GOOD)) as f:
        return int(f.read())
    except (FileNotFoundError, ValueError):
      return None

  def expected_resume(self) -> int:
    """The step a restart must resume from: LAST_GOOD if it names a complete step,
    else the newest complete step (a save renamed but never confirmed), else 0."""
    good, complete = self.last_good(), self.complete()
    if good in complete:
      return good
    return max(complete, default=0)

  def unconfirmed(self, since: float = 0.0) -> bool:
    """A complete step newer than LAST_GOOD (committed after wall time `since`)."""
    good = self.last_good() or 0
    return any(s > good and os.path.getmtime(
        os.path.join(self.dir, str(s), 'commit_success.txt')) >= since
               for s in self.complete())


def kill_when(w: Worker, phase: str, ck: Ckpts, rng: random.Random) -> bool:
  """Waits for the moment `phase` names, then SIGKILLs `w`; False if it finished first.

  phase: 'save' (a step's Orbax tmp directory appeared: inside a save), 'unconfirmed'
  (a step was renamed complete but LAST_GOOD not yet written), 'step' (a random time
  after a random number of training steps), 'startup' (a random time while importing, compiling or
  restoring, before the first step).
  """
  seen = len(w.steps())
  if phase == 'startup':
    w.wait_until(lambda: len(w.steps()) > seen, timeout=rng.uniform(0.5, 4.0))
  else:
    # 'step': after a random number (1 to 2 intervals + 1) of this run's steps.
    k = rng.randint(1, 2 * EVERY + 1) if phase == 'step' else 1
    w.wait_until(lambda: len(w.steps()) >= seen + k, timeout=RUN_TIMEOUT)
    if phase == 'save':
      w.wait_until(lambda: bool(ck.tmp()), timeout=60)
    elif phase == 'unconfirmed':
      w.wait_until(lambda: ck.unconfirmed(w.started_wall), timeout=60)
    else:
      time.sleep(rng.uniform(0.0, 1.5 * DELAY))
  return w.signal(signal.SIGKILL)


def landed(ck: Ckpts, steps: list[int], since: float) -> str:
  """Where a kill landed, judged from what it left (a save of this run only)."""
  if not steps:
    return 'before the first step (startup/compile/restore)'
  if ck.tmp():
    return f'inside a save ({", ".join(ck.tmp())} left behind)'
  if ck.unconfirmed(since):
    return 'after a save was renamed, before LAST_GOOD was written'
  return 'between saves'


def test_sigkill_at_any_point_resumes_from_last_good_and_ends_bit_identical(
    tmp_path, cache_dir, reference):
  rng = random.Random(SEED)
  phases = ['save', 'step', 'unconfirmed'] + (['startup', 'save', 'step'] if FULL else [])
  outcomes, chain, kills = [], 0, 0
  workdir = tmp_path / f'chain{chain}'
  expected = 0  # Step the next run must resume from.
  while True:
    phase = phases[kills % len(phases)] if kills < NUM_KILLS else None
    ck = Ckpts(workdir)
    since = time.time()
    w = Worker(workdir, tmp_path / 'final.npz', ae_steps=STEPS, ckpt_every=EVERY,
               step_delay=DELAY, cache_dir=cache_dir)
    sent = kill_when(w, phase, ck, rng) if phase else False
    rc = w.wait(RUN_TIMEOUT)
    steps = w.steps()
    # It resumed from exactly the last confirmed step: its first step is the next one.
    if steps:
      assert steps[0] == expected + 1, (expected, steps, w.report())
      assert w.resumed_from() == (expected or None), w.report()
    if sent:
      assert rc == -signal.SIGKILL, w.report()
      kills += 1
      where = landed(ck, steps, since)
      expected = ck.expected_resume()
      # Never more than one checkpoint interval of finished steps is lost.
      assert (steps[-1] if steps else expected) - expected <= EVERY, (steps, expected)
      outcomes.append(f'kill {kills} ({phase}): after step {steps[-1] if steps else "-"}, '
                      f'landed {where}; complete {ck.complete()}, LAST_GOOD '
                      f'{ck.last_good()} -> restart resumes from {expected}')
      continue
    assert rc == 0, w.report()
    assert steps and steps[-1] == STEPS
    assert not ck.tmp(), 'a restart must clear the killed save'
    assert_bit_identical(load_leaves(tmp_path / 'final.npz'), reference)
    outcomes.append(f'chain {chain}: completed, final state bit-identical to the '
                    'uninterrupted run')
    if kills >= NUM_KILLS:
      break
    chain, expected = chain + 1, 0  # The run ended before all kills: a new chain.
    workdir = tmp_path / f'chain{chain}'
  print(f'MIPAE_KILL_SEED={SEED}\n' + '\n'.join(outcomes))
  # At least one kill landed inside a save (the tmp dir was left behind), so the
  # "never restore a partial checkpoint" path was exercised.
  assert any('inside a save' in o for o in outcomes), outcomes


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_stop_signal_saves_the_current_step_then_exits(tmp_path, cache_dir, reference, sig):
  workdir = tmp_path / 'run'
  w = Worker(workdir, tmp_path / 'final.npz', ae_steps=STEPS, ckpt_every=EVERY,
             step_delay=DELAY, cache_dir=cache_dir)
  # Step 3 is between two checkpoint steps (ckpt_every=2).
  assert w.wait_until(lambda: 3 in w.steps(), timeout=RUN_TIMEOUT), w.report()
  assert w.signal(sig)
  rc = w.wait(120)
  assert rc == 128 + sig, w.report()  # 143 for SIGTERM, 130 for SIGINT.
  stopped = w.steps()[-1]
  assert stopped < STEPS
  assert (f'{sig.name} received: saved the ae stage at step {stopped} in '
          f'{workdir}/checkpoints/ae. Run the same command again to resume.') in w.stderr
  ck = Ckpts(workdir)
  assert ck.last_good() == stopped and stopped in ck.complete() and not ck.tmp()
  if sig == signal.SIGINT:
    # The saved step restores (digest-checked) in another process.
    config = tiny.get_config()
    abstract = jax.eval_shape(lambda: train.create_train_state(config, jax.random.key(0)))
    with checkpoint.CheckpointStore(str(workdir), 'ae', enabled=False) as store:
      _, meta, step = store.restore(abstract)
    assert step == stopped and meta['step'] == stopped
    return
  again = Worker(workdir, tmp_path / 'final.npz', ae_steps=STEPS, ckpt_every=EVERY,
                 cache_dir=cache_dir)
  assert again.wait(RUN_TIMEOUT) == 0, again.report()
  assert again.resumed_from() == stopped and again.steps()[0] == stopped + 1
  assert_bit_identical(load_leaves(tmp_path / 'final.npz'), reference)


# ----------------------------------------------------------------- Bad inputs.
# Those not already asserted in test_configuration / test_checkpoint / test_data_*.


def test_mpi3d_array_of_wrong_dtype(tmp_path):
  np.save(tmp_path / 'f.npy', np.zeros((4, 64, 64, 3), np.float32))
  with pytest.raises(ValueError, match=r'f\.npy: expected uint8 images \[N, 64, 64, 3\], '
                                       r'found float32 \[4, 64, 64, 3\]'):
    mpi3d.open_images(str(tmp_path / 'f.npy'))


def test_mpi3d_file_of_unknown_type(tmp_path):
  (tmp_path / 'mpi3d.h5').write_bytes(b'\x89HDF')
  with pytest.raises(ValueError, match=r"mpi3d\.h5: expected a \.npz \(key 'images'\) or "
                                       r'\.npy file'):
    mpi3d.open_images(str(tmp_path / 'mpi3d.h5'))


def test_mnist_npz_of_float_images(tmp_path):
  x = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)  # In [0, 1].
  y = np.zeros(3, np.uint8)
  np.savez(tmp_path / 'mnist.npz', x_train=x, y_train=y, x_test=x, y_test=y)
  with pytest.raises(ValueError, match=r'train images should be uint8 \[N, 28, 28\], found '
                                       r'float32 \[3, 28, 28\]'):
    moving_mnist.load_mnist(str(tmp_path / 'mnist.npz'))


def test_mnist_npz_with_labels_not_one_per_image(tmp_path):
  x = np.zeros((3, 28, 28), np.uint8)
  np.savez(tmp_path / 'mnist.npz', x_train=x, y_train=np.zeros(2, np.uint8), x_test=x,
           y_test=np.zeros(3, np.uint8))
  with pytest.raises(ValueError, match=r'train labels should be \[3\] \(one per image\), '
                                       r'found \[2\]'):
    moving_mnist.load_mnist(str(tmp_path / 'mnist.npz'))


def test_corrupt_config_record_refuses_to_resume(tmp_path):
  (tmp_path / config_record.CONFIG_FILE).write_text('{"batch_size": 8, "data": {')
  with pytest.raises(config_record.ConfigMismatchError,
                     match=r"config\.json cannot be read .*damaged \(truncated\?\)\. "
                           r'Restore it from a copy; or move it aside \(mv .*config\.json '
                           r'.*config\.json\.damaged\) and rerun mipae-train'):
    pipeline.train_and_evaluate(tiny.get_config(), str(tmp_path))


def test_unreadable_last_good_falls_back_with_a_warning(tmp_path, caplog):
  state = {'w': np.arange(4, dtype=np.float32)}
  with checkpoint.CheckpointStore(str(tmp_path), 'ae') as store:
    store.save(1, state)
    store.save(2, {'w': state['w'] + 1})
  with open(tmp_path / 'checkpoints' / 'ae' / checkpoint.LAST_GOOD, 'w') as f:
    f.write('garbage\n')
  abstract = jax.eval_shape(lambda: state)
  with caplog.at_level(logging.WARNING), \
       checkpoint.CheckpointStore(str(tmp_path), 'ae', enabled=False) as store:
    restored, _, step = store.restore(abstract)
  assert step == 2 and np.array_equal(restored['w'], state['w'] + 1)
  assert 'Ignoring unreadable' in caplog.text and 'LAST_GOOD' in caplog.text


def test_evaluate_a_directory_that_is_not_a_run(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'config\.json not found: .* is not a run '
                                              r'directory made by mipae-train'):
    evaluate.evaluate_workdir(str(tmp_path))


def test_evaluate_override_outside_eval(tmp_path):
  config_record.record_config(str(tmp_path), tiny.get_config())
  with pytest.raises(ValueError, match=r"override 'model\.nf=3': expected "
                                       r'eval\.<field>=<value>'):
    evaluate.evaluate_workdir(str(tmp_path), ['model.nf=3'])


def test_processes_that_see_different_checkpoints_are_stopped(monkeypatch):
  """A workdir not shared by all hosts: process 1 finds no checkpoint while process 0
  resumes from step 4. Refused before any step (simulated: two process indices)."""
  from jax.experimental import multihost_utils
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'process_allgather',
                      lambda x, **kw: np.array([4, 0], np.int32))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"(?s)would resume from different steps \{0: 4, 1: 0\}.*"
                           r'filesystem shared by all'):
    distributed.agree_on_start('ae', 4, '/run/checkpoints/ae')  # pylint: disable=protected-access


def test_bad_config_in_saved_json_is_named():
  """A config edited by hand into an invalid one is rejected by validate, naming it."""
  c = ml_collections.ConfigDict(json.loads(json.dumps(tiny.get_config().to_dict())))
  c.train.ae_steps = -1
  with pytest.raises(ValueError, match=r'config\.train\.ae_steps=-1'):
    from mipae_jax import configuration
    configuration.validate(c, num_devices=1)


def test_mnist_labels_out_of_range(tmp_path):
  x = np.zeros((3, 28, 28), np.uint8)
  y = np.array([0, 3, 12], np.uint8)
  np.savez(tmp_path / 'mnist.npz', x_train=x, y_train=y, x_test=x, y_test=y)
  with pytest.raises(ValueError, match=r'train labels should be digits 0-9, found values '
                                       r'from 0 to 12'):
    moving_mnist.load_mnist(str(tmp_path / 'mnist.npz'))


def test_dsprites_array_rescaled_to_255():
  from mipae_jax.data import dsprites
  imgs = np.zeros((2, 64, 64), np.uint8)
  imgs[0, 10, 10] = 255
  with pytest.raises(ValueError, match=r'binary 0/1 pixels .* found values up to 255'):
    dsprites._check_binary('dsprites.npz', imgs)


def test_sigkill_mid_epoch_of_a_tfds_run_resumes_bit_identical(tmp_path, cache_dir):
  """config.data.pipeline='tfds': a run SIGKILLed mid-epoch (12 videos, 16 read a step)
  restarts from its last checkpoint, puts the grain reader where that checkpoint saved it
  and ends bit-identical to a run never stopped."""
  from mipae_jax.configs import tiny
  from mipae_jax.data import prepare
  data_dir = tmp_path / 'tfds'
  flag = [f'--tfds={prepare.prepare(tiny.get_config().data, str(data_dir), 12, 2)}'
          f'@{data_dir}']
  steps = 6
  straight = Worker(tmp_path / 'straight', tmp_path / 'straight.npz', ae_steps=steps,
                    ckpt_every=EVERY, cache_dir=cache_dir, extra=flag)
  assert straight.wait(RUN_TIMEOUT) == 0, straight.report()
  workdir = tmp_path / 'killed'
  w = Worker(workdir, tmp_path / 'final.npz', ae_steps=steps, ckpt_every=EVERY,
             step_delay=0.5, cache_dir=cache_dir, extra=flag)
  last_good = workdir / 'checkpoints' / 'ae' / 'LAST_GOOD'
  assert w.wait_until(lambda: 3 in w.steps() and last_good.exists(), RUN_TIMEOUT), w.report()
  w.signal(signal.SIGKILL)
  assert w.wait(RUN_TIMEOUT) == -signal.SIGKILL, w.report()
  again = Worker(workdir, tmp_path / 'final.npz', ae_steps=steps, ckpt_every=EVERY,
                 cache_dir=cache_dir, extra=flag)
  assert again.wait(RUN_TIMEOUT) == 0, again.report()
  assert again.resumed_from() == 2, again.report()  # Step 2's save: inside epoch 2.
  assert_bit_identical(load_leaves(tmp_path / 'final.npz'),
                       load_leaves(tmp_path / 'straight.npz'))
