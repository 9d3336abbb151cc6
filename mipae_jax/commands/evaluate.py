"""mipae-evaluate: evaluates the latest checkpoints of a run directory (the autoencoder
alone if there is no LSTM yet), writing WORKDIR/eval/report.md and metrics.json.

  mipae-evaluate --workdir=runs/demo [--config.eval.mig_samples=20000]

`--config.eval.<field>=<value>` overrides an evaluation field as in mipae-train
(`--override eval.<field>=<value>` is the same); the networks are fixed by the run, so
no other field may change. An LSTM trained on an older autoencoder than the workdir's is
refused unless `--allow_stale_lstm`. Bad input is refused in one line, exit status 2
(`--verbose` or `MIPAE_VERBOSE=1`: with the traceback).
"""

import sys

from mipae_jax import cli


def _define_flags():
  from absl import flags

  fresh = cli.fresh_flags('workdir', 'override', 'allow_stale_lstm')
  flags.DEFINE_string('workdir', None, 'A run directory made by mipae-train.')
  flags.DEFINE_multi_string('override', [], 'eval.* overrides, e.g. eval.mig_samples=20000 '
                            '(the same as --config.eval.mig_samples=20000).')
  flags.DEFINE_boolean('allow_stale_lstm', False, 'Evaluate an LSTM trained on an older '
                       'autoencoder than the workdir\'s (refused otherwise).')
  return fresh


def main(argv=None):
  from mipae_jax import evaluate

  argv = list(sys.argv if argv is None else argv)
  # `--config.eval.*` are taken out of argv before absl, which knows no --config here.
  overrides = [a for a in argv[1:] if a.startswith('--config.')]
  argv = [a for a in argv if not a.startswith('--config.')]
  flags_ = _define_flags()

  def run(_):
    cli.setup_logging()
    cli.writes_to(flags_.workdir)
    results = evaluate.evaluate_workdir(flags_.workdir, [*overrides, *flags_.override],
                                        allow_stale_lstm=flags_.allow_stale_lstm)
    evaluate.print_summary(flags_.workdir, results)

  cli.run(run, argv, config_flag=None, required=('workdir',), doc=__doc__)


if __name__ == '__main__':
  main()
