"""mipae-convert: published PyTorch checkpoints -> a run directory mipae-evaluate reads.

  mipae-convert --checkpoint=dsprites-ae.pth --lstm_checkpoint=dsprites-lstm.pth \\
      --config=dsprites --out=runs/published
  mipae-evaluate --workdir=runs/published

--checkpoint is the published autoencoder run's file (content_encoder, position_encoder,
decoder, discriminator), --lstm_checkpoint the pose-LSTM run's (optional). --config is
the config the weights were trained with, by name or file, with --config.FIELD=VALUE
overrides (a run trained with the published --normalize_position needs
--config.model.normalize_pose=True). --out must be new or empty. See docs/convert.md.

Files are loaded without running any code in them: a file that is not such a checkpoint
is refused. Bad input (a missing or unreadable file, weights that do not fit the config,
a non-empty --out) is refused in one line with exit status 2; `--verbose` or
`MIPAE_VERBOSE=1` adds the traceback.
"""

import shlex
import sys

from mipae_jax import cli

_FLAG_NAMES = ('config', 'checkpoint', 'lstm_checkpoint', 'out')


def _define_flags(argv):
  """The flags, defined afresh on every call (`cli.fresh_flags`)."""
  from absl import flags

  fresh = cli.fresh_flags(*_FLAG_NAMES)
  cli.define_config_flag(
      'The config the weights were trained with: a packaged one by name (dsprites, mnist, '
      'mpi3d, ...: see mipae_jax.configs) or a config file path, with --config.FIELD=VALUE '
      'overrides.', argv)
  flags.DEFINE_string('checkpoint', None, 'The published autoencoder checkpoint (.pth).')
  flags.DEFINE_string('lstm_checkpoint', None, 'The published pose-LSTM checkpoint (.pth), '
                      'optional.')
  flags.DEFINE_string('out', None, 'The run directory to write (new, or empty).')
  return fresh


def summary(written: dict) -> str:
  """What `convert.write_run_directory` wrote, and the command that evaluates it."""
  lines = [f'Wrote the run directory {written["out"]}:',
           '  config.json  the config the weights were converted for']
  for stage, what in (('ae', 'autoencoder'), ('lstm', 'pose LSTM')):
    record = written[stage]
    if record is not None:
      lines.append(f'  checkpoints/{stage}/{record["step"]}  the {what} of {record["file"]} '
                   f'(step: {record["step_from"]})')
  if written['lstm'] is None:
    lines.append('  (no LSTM: mipae-evaluate scores the autoencoder alone)')
  lines += ['Evaluate it with:', f'  mipae-evaluate --workdir={shlex.quote(written["out"])}']
  return '\n'.join(lines)


def _main(flags_):
  from mipae_jax import convert

  cli.setup_logging()
  cli.writes_to(flags_.out)
  written = convert.write_run_directory(flags_.config, flags_.out, flags_.checkpoint,
                                        flags_.lstm_checkpoint)
  print(summary(written))
  sys.stdout.flush()


def main(argv=None):
  flags_ = _define_flags(argv)
  cli.run(lambda _: _main(flags_), argv, required=('checkpoint', 'config', 'out'),
          doc=__doc__)


if __name__ == '__main__':
  main()
