"""Builds a config's dataset once, as TFDS array_record splits, for `pipeline='tfds'` runs.

  mipae-prepare --config=demo --data_dir=DIR [--train_videos=10000 --test_videos=2000]

Rendered Moving dSprites needs nothing else (the published sprite array, when
`config.data.path` names it, is used instead of the renderer); Moving MNIST reads the
user's MNIST files and MPI3D the user's array from `config.data.path`. TFDS writes the
splits into a temporary directory and renames it only when the build is complete, so a
killed build leaves nothing that loads; running the same command again builds it
(an existing complete build is reused). The last line printed is the `--config`
override that trains from the dataset.
"""

from __future__ import annotations

import os
import sys

_FLAG_NAMES = ('config', 'data_dir', 'train_videos', 'test_videos')


def _define_flags(argv):
  """The flags, defined afresh on every `main()` call (`cli.fresh_flags`)."""
  from absl import flags

  from mipae_jax import cli

  fresh = cli.fresh_flags(*_FLAG_NAMES)
  cli.define_config_flag('The run config the dataset is for: a packaged one by name or '
                         'a config file path, with --config.FIELD=VALUE overrides.', argv)
  flags.DEFINE_string('data_dir', None, 'Where TFDS keeps prepared datasets.')
  flags.DEFINE_integer('train_videos', 10_000, 'Videos in the train split.')
  flags.DEFINE_integer('test_videos', 2_000, 'Videos in the test split.')
  return fresh


def prepare(data_config, data_dir: str, num_train: int, num_test: int) -> str:
  """Builds (or finds built) the dataset of `data_config`; returns its `tfds_name`."""
  from mipae_jax import errors
  from mipae_jax.data import tfds_builders, tfds_source

  if num_train < 1 or num_test < 1:
    raise errors.ConfigError(f'--train_videos={num_train} and --test_videos={num_test}: '
                             'both must be at least 1.')
  builder_cls = tfds_source.BUILDERS[data_config.name]
  manual = None
  if data_config.path:
    path = os.path.expanduser(data_config.path)
    manual = path if os.path.isdir(path) else os.path.dirname(path)
  config = tfds_source.prepared_config(data_config, num_train, num_test)
  builder = builder_cls(config=config, data_dir=os.path.expanduser(data_dir),
                        file_format='array_record')
  try:
    tfds_builders.prepare_builder(builder, manual)
  except FileNotFoundError as e:
    raise errors.DataNotFoundError(errors.first_line(str(e))) from e
  return tfds_source.dataset_name(data_config, num_train, num_test)


def _main(flags_):
  from mipae_jax import cli, data

  cli.setup_logging()
  cli.writes_to(flags_.data_dir)
  c = flags_.config
  data.validate_stream_fields(c.data)
  name = prepare(c.data, flags_.data_dir, flags_.train_videos, flags_.test_videos)
  print(f'Prepared {name} in {flags_.data_dir}. Train from it with:')
  print(f'  --config.data.pipeline=tfds --config.data.tfds_name={name} '
        f'--config.data.data_dir={flags_.data_dir}')


def main(argv=None):
  from mipae_jax import cli

  argv = sys.argv if argv is None else argv
  flags_ = _define_flags(argv)
  cli.run(lambda _: _main(flags_), argv, required=('config', 'data_dir'), doc=__doc__)


if __name__ == '__main__':
  main()
