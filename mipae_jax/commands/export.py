"""mipae-export: a trained run -> a small exported model that `load_run` reads.

  mipae-export --workdir=runs/demo --out=pretrained/demo
  mipae-export --workdir=~/runs/long-mipae-s0 --out=pretrained/moving_dsprites_two_sprites \\
      --step=100000 --analogy_videos=20 --command='experiments/long_run.sh' \\
      --machine='2 CPU cores' --training_hours=4.2 --note=probe_mig=0.12

Writes --out (new, or empty) with the run's config.json, variables.npz (the autoencoder's
parameters and BatchNorm statistics and the pose LSTM's parameters: no optimiser state,
no critic) and pretrained.json (the source run, the steps, the training time, the
command, the notes). --analogy_videos=N measures the analogy accuracy on N test videos
and ships the classifier that read them, so a test gets the same numbers back
(`mipae_jax.pretrained.recompute_analogy`); it trains that classifier once (~2 minutes at
64 x 64) unless it is cached. See docs/pretrained.md.

Bad input (not a run, a step that was not kept, a pose LSTM trained on another
autoencoder, a non-empty --out) is refused in one line with exit status 2; `--verbose` or
`MIPAE_VERBOSE=1` adds the traceback.
"""

import json
import shlex
import sys

from mipae_jax import cli, errors

_FLAG_NAMES = ('workdir', 'out', 'step', 'analogy_videos', 'analogy_seed', 'command',
               'machine', 'training_hours', 'note', 'lstm')


def _define_flags():
  """The flags, defined afresh on every call (`cli.fresh_flags`)."""
  from absl import flags

  fresh = cli.fresh_flags(*_FLAG_NAMES)
  flags.DEFINE_string('workdir', None, 'The run directory to export (mipae-train\'s).')
  flags.DEFINE_string('out', None, 'The folder to write (new, or empty).')
  flags.DEFINE_integer('step', None, 'The autoencoder step to export, a kept checkpoint '
                       '(default: the newest).')
  flags.DEFINE_boolean('lstm', True, 'Export the pose LSTM trained on that autoencoder '
                       '(--nolstm: the autoencoder alone, no predictions).')
  flags.DEFINE_integer('analogy_videos', 0, 'Measure the analogy accuracy on this many '
                       'test videos and record it (0: skip).')
  flags.DEFINE_integer('analogy_seed', None, 'The seed of those videos (default: the '
                       'run\'s eval.seed).')
  flags.DEFINE_string('command', None, 'The command that trained the run, recorded.')
  flags.DEFINE_string('machine', None, 'What it trained on, recorded (e.g. "2 CPU cores").')
  flags.DEFINE_float('training_hours', None, 'The training wall time (default: read from '
                     'the run\'s eval/metrics.json when it timed every step).')
  flags.DEFINE_multi_string('note', [], 'KEY=VALUE to record (a JSON value, else text); '
                            'repeatable.')
  return fresh


def parse_notes(items) -> dict:
  """`['a=0.5', 'b=text']` -> `{'a': 0.5, 'b': 'text'}`; ConfigError without a `=`."""
  out = {}
  for item in items:
    key, sep, text = item.partition('=')
    if not sep or not key:
      raise errors.ConfigError(f'--note={item!r}: expected KEY=VALUE.')
    try:
      out[key] = json.loads(text)
    except ValueError:
      out[key] = text
  return out


def summary(out: str, record: dict) -> str:
  """What was written, and how to use it."""
  lstm = record['lstm_step']
  t = record['training']
  lines = [f'Wrote the exported model {out}:',
           f'  variables.npz    autoencoder step {record["ae_step"]}'
           + (f', pose LSTM step {lstm}' if lstm is not None else ' (no pose LSTM)'),
           '  config.json      the run\'s config',
           '  pretrained.json  source run ' + record['source']['workdir'] + ', training time '
           + (f'{t["seconds"] / 3600:.2f} h' if t.get('seconds') is not None
              else 'not recorded (pass --training_hours)')]
  a = record.get('analogy')
  if a:
    lines.append(f'  analogy accuracy {a["results"]["content_accuracy"]:.3f} on '
                 f'{a["videos"]} test videos (seed {a["seed"]}); its classifier in '
                 f'{a["classifier_file"]}')
  lines += ['Load it with:', f'  mipae_jax.load_run({out!r})',
            'Show it in a run\'s report with:',
            f'  python -m mipae_jax.pretrained --model={shlex.quote(out)} --workdir=RUN']
  return '\n'.join(lines)


def _main(flags_):
  from mipae_jax import pretrained

  cli.setup_logging()
  cli.writes_to(flags_.out)
  hours = flags_.training_hours
  record = pretrained.export(
      flags_.workdir, flags_.out, parse_notes(flags_.note), step=flags_.step,
      command=flags_.command, machine=flags_.machine,
      training_seconds=None if hours is None else hours * 3600, with_lstm=flags_.lstm,
      analogy_videos=flags_.analogy_videos, analogy_seed=flags_.analogy_seed)
  print(summary(flags_.out, record))
  sys.stdout.flush()


def main(argv=None):
  flags_ = _define_flags()
  cli.run(lambda _: _main(flags_), argv, config_flag=None, required=('workdir', 'out'),
          doc=__doc__)


if __name__ == '__main__':
  main()
