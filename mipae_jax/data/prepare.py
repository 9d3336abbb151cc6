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

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The run config the dataset is for.',
                                lock_config=True)
flags.DEFINE_string('data_dir', None, 'Where TFDS keeps prepared datasets.')
flags.DEFINE_integer('train_videos', 10_000, 'Videos in the train split.')
flags.DEFINE_integer('test_videos', 2_000, 'Videos in the test split.')


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


def _main(argv):
  del argv
  from mipae_jax import cli, data

  cli.setup_logging()
  c = FLAGS.config
  data.validate_stream_fields(c.data)
  name = prepare(c.data, FLAGS.data_dir, FLAGS.train_videos, FLAGS.test_videos)
  print(f'Prepared {name} in {FLAGS.data_dir}. Train from it with:')
  print(f'  --config.data.pipeline=tfds --config.data.tfds_name={name} '
        f'--config.data.data_dir={FLAGS.data_dir}')


def main(argv=None):
  from mipae_jax import cli

  cli.run(_main, sys.argv if argv is None else argv, required=('config', 'data_dir'),
          doc=__doc__)


if __name__ == '__main__':
  main()
