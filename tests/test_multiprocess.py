"""Two processes on this machine (jax.distributed over 127.0.0.1, gloo CPU collectives).

* Data parallel over 2 processes x 1 CPU device ends with the parameters of one process
  over 2 devices on the same global batch (bit-identical here: a 2-way all-reduce sums
  in one order; the 1e-5 tolerance is what is promised), also across a stop signal to
  one process, which stops both at one saved step (a save takes every process), and the
  resume, where every process restores the checkpoint that only process 0 wrote. The
  same holds for a host-sampled source (numpy, as MPI3D) and the prepared-dataset reader.
* Only process 0 writes: the other process's Python-level writes under the workdir are
  audited (none, in the stopped run and the resumed one), and the files show one writer.
* A process killed mid-run stops the other within a bounded time, with a message.
"""

import json
import os
import re
import signal
import time

import numpy as np
import pytest
from helpers.launch import Worker, free_port

from mipae_jax import distributed

TIMEOUT = 300
HEARTBEAT = 5  # Seconds without heartbeats before a process is declared dead.


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('xla_cache_mp'))


def start_pair(workdir, out, cache_dir, audit_dir=None, more=(), **kw):
  port = free_port()
  workers = []
  for i in range(2):
    extra = [f'--coordinator=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}',
             f'--heartbeat_timeout={HEARTBEAT}', *more]
    if audit_dir is not None:
      extra.append(f'--audit_writes={audit_dir}/writes.p{i}.json')
    workers.append(Worker(workdir, out, devices=1, cache_dir=cache_dir, extra=extra, **kw))
  return workers


def load_leaves(path):
  with np.load(path) as f:
    return [f[f'arr_{i}'] for i in range(len(f.files))]


def test_two_processes_stop_together_resume_and_train_like_one_with_one_writer(
    tmp_path, cache_dir):
  """A save takes every process, so SIGTERM to process 1 alone must stop both, each
  saving the same step (they agree at a log step); both then resume from the checkpoint
  only process 0 wrote, two steps more, and end with the parameters of one process
  holding both devices. Process 1 writes nothing under the workdir in either run."""
  workdir = tmp_path / 'multi'
  audits = [tmp_path / 'audit_stopped', tmp_path / 'audit_resumed']
  for audit in audits:
    audit.mkdir()
  pair = start_pair(workdir, tmp_path / 'multi.npz', cache_dir, audits[0], ae_steps=10_000,
                    step_delay=0.05)
  assert pair[1].wait_until(lambda: 3 in pair[1].steps(), timeout=TIMEOUT), pair[1].report()
  pair[1].signal(signal.SIGTERM)
  for w in pair:
    assert w.wait(60) == 128 + signal.SIGTERM, w.report()
    assert 'PREEMPTED: SIGTERM received: saved the ae stage at step' in w.stderr, w.report()
  saved = [int(re.search(r'saved the ae stage at step (\d+)', w.stderr).group(1))
           for w in pair]
  assert saved[0] == saved[1] >= 3, saved
  stop = saved[0]
  ckpt = workdir / 'checkpoints' / 'ae'
  assert int((ckpt / 'LAST_GOOD').read_text()) == stop
  end = stop + 2
  pair = start_pair(workdir, tmp_path / 'multi.npz', cache_dir, audits[1], ae_steps=end)
  for w in pair:
    assert w.wait(TIMEOUT) == 0, w.report()
    assert w.resumed_from() == stop, w.report()
  for audit in audits:
    chief = json.loads((audit / 'writes.p0.json').read_text())
    other = json.loads((audit / 'writes.p1.json').read_text())
    assert other == [], other
    assert any('LAST_GOOD' in path for _, path in chief), chief  # The audit sees writes.
  single = Worker(tmp_path / 'single', tmp_path / 'single.npz', ae_steps=end, devices=2,
                  cache_dir=cache_dir)
  assert single.wait(TIMEOUT) == 0, single.report()
  want = load_leaves(tmp_path / 'single.npz')
  for i in range(2):
    got = load_leaves(tmp_path / f'multi.p{i}.npz')
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  exact = all(np.array_equal(a, b) for a, b in
              zip(load_leaves(tmp_path / 'multi.p1.npz'), want, strict=True))
  print(f'2 processes vs 1 process: bit-identical={exact}')
  # The files show a single writer: Orbax data of process 0 only, one event file per
  # run, one metrics line per step.
  assert int((ckpt / 'LAST_GOOD').read_text()) == end
  # Saved every 2 steps, at the stop and at the end; the newest 3 kept (the config's keep).
  saves = sorted(set(range(2, end + 1, 2)) | {stop, end})
  assert set(os.listdir(ckpt)) == {str(k) for k in saves[-3:]} | {'LAST_GOOD'}
  written = [p for p in (ckpt / str(end)).rglob('*') if 'process_1' in p.name]
  assert written == []
  assert len(os.listdir(workdir / 'tensorboard')) == 2  # One per run, both by process 0.
  lines = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [x['step'] for x in lines] == list(range(1, end + 1))


def assert_pair_trains_like_one(tmp_path, cache_dir, flags):
  """Two processes of one device each, 2 AE steps with worker `flags`, end with the
  parameters of one process holding both devices (to 1e-5)."""
  single = Worker(tmp_path / 'single', tmp_path / 'single.npz', ae_steps=2, devices=2,
                  cache_dir=cache_dir, extra=flags)
  assert single.wait(TIMEOUT) == 0, single.report()
  pair = start_pair(tmp_path / 'multi', tmp_path / 'multi.npz', cache_dir, ae_steps=2,
                    more=flags)
  for w in pair:
    assert w.wait(TIMEOUT) == 0, w.report()
  want = load_leaves(tmp_path / 'single.npz')
  for i in range(2):
    for a, b in zip(load_leaves(tmp_path / f'multi.p{i}.npz'), want, strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_host_sampled_source_trains_alike_on_two_processes(tmp_path, cache_dir):
  """The host path (numpy sampling, as MPI3D): every process draws the global batch from
  the same key and keeps its own rows. Rows taken twice or not at all would change the
  parameters against one process holding both devices."""
  assert_pair_trains_like_one(tmp_path, cache_dir, ['--host_source'])


def test_tfds_reader_shards_rows_over_two_processes_like_one(tmp_path, cache_dir):
  """config.data.pipeline='tfds': each process reads only its devices' rows of the global
  batch from the prepared dataset; together they train exactly as one process holding
  both devices (rows read twice or not at all would change the parameters)."""
  from mipae_jax.configs import tiny
  from mipae_jax.data import prepare
  data_dir = tmp_path / 'tfds'
  name = prepare.prepare(tiny.get_config().data, str(data_dir), 12, 2)
  flag = f'--tfds={name}@{data_dir}'
  assert_pair_trains_like_one(tmp_path, cache_dir, [flag])


# The chief's death is JAX's coordination service's to report (the survivor is terminated
# by it); the worker's is ours (PeerLost), so only that case runs in `make test`.
@pytest.mark.parametrize('victim', [pytest.param(1, id='worker_killed'),
                                    pytest.param(0, id='chief_killed',
                                                 marks=pytest.mark.full)])
def test_a_killed_process_stops_the_other_within_bounded_time(tmp_path, cache_dir, victim):
  pair = start_pair(tmp_path / 'run', tmp_path / 'out.npz', cache_dir, ae_steps=10_000,
                    step_delay=0.05)
  killed, survivor = pair[victim], pair[1 - victim]
  assert killed.wait_until(lambda: 3 in killed.steps(), timeout=TIMEOUT), killed.report()
  killed.signal(signal.SIGKILL)
  t0 = time.monotonic()
  rc = survivor.wait(60)  # Bounded: the heartbeat timeout plus shutdown, never a hang.
  elapsed = time.monotonic() - t0
  killed.wait(30)
  print(f'process {victim} killed: process {1 - victim} exited rc={rc} after '
        f'{elapsed:.1f} s')
  assert rc != 0, survivor.report()
  assert elapsed < 6 * HEARTBEAT, elapsed
  err = survivor.stderr
  if victim == 1:
    # Process 0 sees its collective fail, says what happened and what to do, and exits
    # with its own code (JAX's shutdown would otherwise abort it: rc -6).
    assert rc == distributed.PEER_LOST_EXIT_CODE, survivor.report()
    assert 'PeerLost: ae stage, after step' in err, survivor.report()
    assert 'Another process most likely died' in err
    assert 'Restart every process with the same command' in err
  else:
    # The coordinator itself died: JAX's coordination client terminates the process.
    assert ('another task died' in err or 'lost the others' in err), survivor.report()
  # Whatever process 0 had confirmed is intact.
  ckpt = tmp_path / 'run' / 'checkpoints' / 'ae'
  good = int((ckpt / 'LAST_GOOD').read_text())
  assert (ckpt / str(good) / 'commit_success.txt').exists()
