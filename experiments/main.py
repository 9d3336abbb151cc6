"""Train and evaluate MIPAE: autoencoder, then pose LSTM, then evaluation.

  python -m experiments.main --config=experiments/configs/dsprites.py --workdir=/tmp/run
  python -m experiments.main --config=experiments/configs/dsprites.py:drnet --workdir=...
  python -m experiments.main --config=... --config.batch_size=64 --workdir=...

Rerunning the same command resumes from the workdir's checkpoints. Multi-host: start
one process per host with the same command plus
  --coordinator=HOST:PORT --num_processes=N --process_id=I
(or nothing extra on Cloud TPU, where JAX discovers the cluster itself).

Bad input (a config field, a data file, the workdir) is refused in one line with exit
status 2, a run that must stop (a diverged loss, a failed save) in one line with status
1; `MIPAE_VERBOSE=1` or `--verbose` adds the traceback.
"""

import sys

from absl import flags
from ml_collections import config_flags

from mipae_jax import cli, distributed, evaluate, pipeline

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (get_config()).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and the report.')
flags.DEFINE_string('coordinator', None, 'Multi-host: address HOST:PORT of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  cli.setup_logging()
  if FLAGS.coordinator or FLAGS.num_processes:
    distributed.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  try:
    results = pipeline.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except distributed.Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)  # As a shell reports a job ended by that signal.
  except distributed.PeerLost as e:
    distributed.exit_after_peer_lost(e)  # Exit code 75: rerun every process to resume.
  evaluate.print_summary(FLAGS.workdir, results)


if __name__ == '__main__':
  cli.run(main)
