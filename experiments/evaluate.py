"""Evaluate the latest checkpoints of a run directory (autoencoder alone if there is no
LSTM yet), writing WORKDIR/eval/report.md and metrics.json.

  python -m experiments.evaluate --workdir=/tmp/run [--config.eval.mig_samples=20000]
"""

import logging

from absl import app, flags

from mipae_jax import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A run directory made by experiments.main.')
flags.DEFINE_multi_string('override', [], 'eval.* overrides, e.g. eval.mig_samples=20000.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
  logging.getLogger('absl').setLevel(logging.WARNING)  # Orbax logs every file at INFO.
  results = pipeline.evaluate_workdir(FLAGS.workdir, FLAGS.override)
  pipeline.print_summary(FLAGS.workdir, results)


if __name__ == '__main__':
  app.run(main)
