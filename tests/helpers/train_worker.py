"""Trains the tiny autoencoder stage in its own process, for the fault-injection tests.

  python tests/helpers/train_worker.py --workdir=W --ae_steps=12 --ckpt_every=2 \
      --out=final.npz [--step_delay=0.05] [--coordinator=127.0.0.1:PORT \
      --num_processes=2 --process_id=I] [--host_source] [--tfds=NAME@DATA_DIR]

Prints `STEP k` (stdout, flushed) after each train step, so a test can time a kill, and
`pipeline`'s own log lines (stderr), among them `ae: resumed from step k`. On success it
writes the final state's leaves to `--out` (with `.p<I>` before the suffix when several
processes run). A SIGTERM/SIGINT makes `pipeline` save and raise `Preempted`; this script
then prints the message and exits with 128 + the signal number, as a shell would.
The caller sets XLA_FLAGS / JAX_PLATFORMS (this file imports JAX).
"""

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', required=True)
  p.add_argument('--out', required=True)
  p.add_argument('--ae_steps', type=int, default=12)
  p.add_argument('--ckpt_every', type=int, default=2)
  p.add_argument('--step_delay', type=float, default=0.0)
  p.add_argument('--coordinator', default=None)
  p.add_argument('--num_processes', type=int, default=None)
  p.add_argument('--process_id', type=int, default=None)
  p.add_argument('--heartbeat_timeout', type=int, default=10)
  p.add_argument('--host_source', action='store_true',
                 help='Sample on the host with numpy, as MPI3D does (HostRendered).')
  p.add_argument('--tfds', default=None,
                 help='NAME@DATA_DIR: train from this prepared dataset (pipeline=tfds).')
  p.add_argument('--audit_writes', default=None,
                 help='Write a JSON list of the Python-level writes this process made '
                      'under --workdir (opens for writing, mkdir, rename, remove) here.')
  args = p.parse_args()
  writes = audit_writes(args.workdir) if args.audit_writes else None

  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format='%(name)s: %(message)s')
  logging.getLogger('absl').setLevel(logging.WARNING)

  import jax
  import numpy as np

  if args.coordinator:
    share_compiled_programs()

  from mipae_jax import data, distributed, parallel, pipeline
  from mipae_jax.configs import tiny
  from mipae_jax.data import common

  class HostRendered:
    """The tiny config's dSprites drawn by their numpy renderer from a key's host RNG:
    a host source (`on_device=False`) like MPI3D, without MPI3D's files or networks."""
    on_device = False

    def __init__(self, source):
      self._source = source

    def __getattr__(self, name):
      return getattr(self._source, name)

    def sample_batch(self, key, batch_size, split='train'):
      return self._source.sample_batch_numpy(common.host_rng(key), batch_size, split)

  if args.coordinator:
    distributed.initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                    heartbeat_timeout_seconds=args.heartbeat_timeout)

  real = parallel.make_train_step

  def reporting(config, stage='ae', *rest, **kwargs):
    step = real(config, stage, *rest, **kwargs)

    def wrapped(state, *more):
      state, metrics = step(state, *more)
      print(f'STEP {int(state.step)}', flush=True)
      if args.step_delay:
        time.sleep(args.step_delay)
      return state, metrics
    return wrapped

  parallel.make_train_step = reporting

  config = tiny.get_config()
  config.train.ae_steps = args.ae_steps
  config.train.ckpt_every = args.ckpt_every
  config.train.lstm_steps = 0
  if args.tfds:
    config.data.pipeline = 'tfds'
    config.data.tfds_name, config.data.data_dir = args.tfds.split('@')
  try:
    source = HostRendered(data.make_source(config.data)) if args.host_source else None
    result = pipeline.train_autoencoder(config, args.workdir, source=source)
  except distributed.Preempted as e:
    record_writes(args.audit_writes, writes)  # The save at the stop is audited too.
    print(f'PREEMPTED: {e}', file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except distributed.PeerLost as e:
    distributed.exit_after_peer_lost(e)  # As mipae-train does.
  out = args.out
  if jax.process_count() > 1:
    root, ext = os.path.splitext(out)
    out = f'{root}.p{jax.process_index()}{ext}'
  leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(result.state))]
  np.savez(out, *leaves)
  record_writes(args.audit_writes, writes)
  print(f'DONE {result.step} steps_run={result.steps_run}', flush=True)


def share_compiled_programs():
  """Lets every process of a group read the programs process 0 compiled.

  On CPU, JAX keys its persistent compilation cache by the topology's fingerprint, which
  differs between the processes of one group, and only process 0 writes the cache: any
  other process compiles every program itself, every time, while process 0 waits for it
  at the first collective (4-5 s a start here). Keyed by the devices' kind instead (JAX's
  own key for a backend without a topology), process 1 reads process 0's entries, and on
  a miss receives process 0's program through the coordinator (share_binary_between_hosts)
  instead of compiling it. The tests compare the parameters with a single process's to
  1e-5, so a wrong program would show; a program process 0 never publishes makes process
  1 fail after 2 minutes instead of JAX's 20.
  """
  import jax
  from jax._src import cache_key

  # A private name: if a JAX upgrade renames it, say so instead of silently compiling.
  assert hasattr(cache_key, '_hash_accelerator_config'), 'jax._src.cache_key changed'
  cache_key._hash_accelerator_config = cache_key._hash_devices
  jax.config.update('jax_share_binary_between_hosts', True)
  jax.config.update('jax_share_binary_between_hosts_timeout_ms', 120_000)


def record_writes(path, writes):
  """Writes the audited list of writes (`audit_writes`) to `path`, if auditing."""
  if writes is not None:
    with open(path, 'w') as f:
      json.dump(writes, f)


def audit_writes(workdir):
  """Records every write-like file operation under `workdir` (Python audit events)."""
  root = os.path.abspath(workdir)
  writes = []
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

  def under(path):
    try:
      p = os.path.abspath(os.fsdecode(path))
      return p == root or p.startswith(root + os.sep)
    except TypeError:
      return False

  def hook(event, args):
    if event == 'open':
      path, mode, flags = args
      writing = (any(c in mode for c in 'wax+') if isinstance(mode, str)
                 else bool((flags or 0) & write_flags))
      if writing and under(path):
        writes.append([event, os.fsdecode(path)])
    elif event in ('os.mkdir', 'os.rename', 'os.remove', 'os.rmdir', 'shutil.rmtree',
                   'os.truncate', 'os.symlink', 'os.link', 'os.chmod'):
      if args and isinstance(args[0], (str, bytes, os.PathLike)) and under(args[0]):
        writes.append([event, os.fsdecode(args[0])])

  sys.addaudithook(hook)
  return writes


if __name__ == '__main__':
  main()
