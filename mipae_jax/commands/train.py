"""mipae-train: the autoencoder, then the pose LSTM, then the evaluation of a run.

  mipae-train --config=demo --workdir=runs/demo
  mipae-train --config=dsprites:drnet --config.batch_size=64 --workdir=runs/drnet
  mipae-train --config=my_config.py --workdir=...   # A config file of your own.

Rerunning the same command resumes from the workdir's checkpoints. Multi-host: start
one process per host with the same command plus
  --coordinator=HOST:PORT --num_processes=N --process_id=I
(or nothing extra on Cloud TPU, where JAX discovers the cluster itself).

Bad input (a config field, a data file, the workdir) is refused in one line with exit
status 2, a run that must stop (a diverged loss, a failed save) in one line with status
1; `--verbose` or `MIPAE_VERBOSE=1` adds the traceback.
"""

import sys

from mipae_jax import cli


def _define_flags(argv):
  from absl import flags

  fresh = cli.fresh_flags('config', 'workdir', 'coordinator', 'num_processes', 'process_id')
  cli.define_config_flag(
      'A packaged config by name (demo, tiny, dsprites:drnet, ...: see mipae_jax.configs) '
      'or a config file path, with --config.FIELD=VALUE overrides.', argv)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and the report.')
  flags.DEFINE_string('coordinator', None, 'Multi-host: address HOST:PORT of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
  return fresh


def _main(flags_):
  from mipae_jax import distributed, evaluate, pipeline

  cli.setup_logging()
  cli.writes_to(flags_.workdir)
  if flags_.coordinator or flags_.num_processes:
    distributed.initialize_distributed(flags_.coordinator, flags_.num_processes,
                                       flags_.process_id)
  try:
    results = pipeline.train_and_evaluate(flags_.config, flags_.workdir)
  except distributed.Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)  # As a shell reports a job ended by that signal.
  except distributed.PeerLost as e:
    distributed.exit_after_peer_lost(e)  # Exit code 75: rerun every process to resume.
  evaluate.print_summary(flags_.workdir, results)


def main(argv=None):
  flags_ = _define_flags(argv)
  cli.run(lambda _: _main(flags_), argv, required=('config', 'workdir'), doc=__doc__)


if __name__ == '__main__':
  main()
