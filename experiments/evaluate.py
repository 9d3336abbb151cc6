"""Evaluate the latest checkpoints of a run directory (autoencoder alone if there is no
LSTM yet), writing WORKDIR/eval/report.md and metrics.json.

  python -m experiments.evaluate --workdir=/tmp/run [--config.eval.mig_samples=20000]

`--config.eval.<field>=<value>` overrides an evaluation field as in experiments.main
(`--override eval.<field>=<value>` is the same); the networks are fixed by the run, so
no other field may change. An LSTM trained on an older autoencoder than the workdir's is
refused unless `--allow_stale_lstm`. Bad input is refused in one line, exit status 2
(`--verbose` or `MIPAE_VERBOSE=1`: with the traceback).
"""

import sys

from absl import flags

from mipae_jax import cli, evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A run directory made by experiments.main.')
flags.DEFINE_multi_string('override', [], 'eval.* overrides, e.g. eval.mig_samples=20000 '
                          '(the same as --config.eval.mig_samples=20000).')
flags.DEFINE_boolean('allow_stale_lstm', False, 'Evaluate an LSTM trained on an older '
                     'autoencoder than the workdir\'s (refused otherwise).')
flags.mark_flags_as_required(['workdir'])
_CONFIG_OVERRIDES = []  # `--config.eval.*` arguments, taken out of argv before absl.


def main(argv):
  del argv
  cli.setup_logging()
  results = evaluate.evaluate_workdir(FLAGS.workdir, [*_CONFIG_OVERRIDES, *FLAGS.override],
                                      allow_stale_lstm=FLAGS.allow_stale_lstm)
  evaluate.print_summary(FLAGS.workdir, results)


if __name__ == '__main__':
  argv = []
  for a in sys.argv:
    (_CONFIG_OVERRIDES if a.startswith('--config.') else argv).append(a)
  cli.run(main, argv, config_flag=None)
