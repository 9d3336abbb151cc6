"""TFDS builders (array_record, no TensorFlow). Training's reader of what they build,
`tfds_source.TrainBatches`, is tested in tests/test_tfds_training.py."""

import os
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from mipae_jax.data import moving_mnist, tfds_builders
from tests.test_data_mnist_mpi3d import TINY, fake_mnist, fake_mpi3d


@pytest.fixture(scope='module')
def dsprites_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tfds'))
  tfds_builders.build(tfds_builders.MipaeMovingDsprites, 'tiny', d)
  return d


def test_builds_and_reads_without_tensorflow(dsprites_dir):
  assert 'tensorflow' not in sys.modules
  src = tfds.data_source('mipae_moving_dsprites/tiny', data_dir=dsprites_dir)
  assert len(src['train']) == 8 and len(src['test']) == 4
  ex = src['train'][3]
  assert ex['video'].shape == (4, 64, 64, 3) and ex['video'].dtype == np.uint8
  assert ex['content'].shape == (4, 7) and ex['pose'].shape == (4, 4)
  files = os.listdir(os.path.join(dsprites_dir, 'mipae_moving_dsprites', 'tiny', '1.0.0'))
  assert any('array_record' in f for f in files)
  info = tfds.builder('mipae_moving_dsprites/tiny', data_dir=dsprites_dir).info
  assert len(info.metadata['test_combos']) == 240
  assert info.metadata['pose_factor_names'] == ['x_0', 'y_0', 'x_1', 'y_1']


def test_builder_matches_device_stream(dsprites_dir):
  src = tfds.data_source('mipae_moving_dsprites/tiny', data_dir=dsprites_dir)
  stream = tfds_builders.MipaeMovingDsprites(config='tiny', data_dir=dsprites_dir)._source(None)
  for split in ('train', 'test'):
    ex = src[split][2]
    assert ex['index'] == 2
    v, f = stream.sample_batch(tfds_builders.example_key(0, split, 2), 1, split)
    np.testing.assert_array_equal(ex['video'], np.round(np.asarray(v[0]) * 255))
    np.testing.assert_array_equal(ex['pose'], np.asarray(f['pose'][0]))
    np.testing.assert_array_equal(ex['content'], np.asarray(f['content'][0]))


class _Broken(tfds_builders.MipaeMovingDsprites):
  """Fails half-way through generating train."""
  name = 'mipae_broken_for_test'
  # TFDS looks for metadata beside the builder's package; tests/ is not a package.
  pkg_dir_path = epath.Path(tfds_builders.__file__).parent

  def _generate_examples(self, src, split, n):
    for i, ex in enumerate(super()._generate_examples(src, split, n)):
      if i == 3:
        raise RuntimeError('disk full')
      yield ex


def test_failed_build_leaves_nothing_loadable(tmp_path):
  with pytest.raises(RuntimeError, match='disk full'):
    tfds_builders.build(_Broken, 'tiny', str(tmp_path))
  assert not _Broken(config='tiny', data_dir=str(tmp_path)).is_prepared()
  written = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs]
  # Only TFDS's config note (.config/metadata.json) may remain: no records, no dataset_info.
  assert not [f for f in written if '/.config/' not in f], written
  with pytest.raises(Exception):  # noqa: B017 - TFDS's own message; the point is it fails.
    tfds.data_source('mipae_broken_for_test/tiny', data_dir=str(tmp_path), download=False)


def test_mnist_and_mpi3d_builders(tmp_path, monkeypatch):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (x, y), (xt, yt) = fake_mnist(30, 0), fake_mnist(10, 1)
  np.savez(manual / 'mnist.npz', x_train=x, y_train=y, x_test=xt, y_test=yt)
  b = tfds_builders.build(tfds_builders.MipaeMovingMnist, 'tiny', str(tmp_path / 'd'),
                          str(manual))
  src = b.as_data_source()
  assert src['test'][0]['video'].shape == (4, 64, 64, 3)
  stream = moving_mnist.MovingMnist(moving_mnist.load_mnist(str(manual / 'mnist.npz')),
                                    num_frames=4, channels=3)
  v, _ = stream.sample_batch(tfds_builders.example_key(0, 'test', 1), 1, 'test')
  np.testing.assert_array_equal(src['test'][1]['video'], np.round(np.asarray(v[0]) * 255))

  monkeypatch.setattr(tfds_builders.MipaeMpi3d, 'LAYOUTS', TINY)
  np.save(manual / 'mpi3d_real.npy', fake_mpi3d(TINY[2160][1]))
  b = tfds_builders.build(tfds_builders.MipaeMpi3d, 'tiny', str(tmp_path / 'd'), str(manual))
  ex = b.as_data_source()['train'][0]
  assert ex['video'].shape == (4, 64, 64, 3) and ex['content'].shape == (4, 5)
  np.testing.assert_array_equal(ex['video'][:, 0, :7, 0],
                                np.concatenate([ex['content'], ex['pose']], -1))


def test_mpi3d_builder_missing_file(tmp_path):
  (tmp_path / 'm').mkdir()
  with pytest.raises(FileNotFoundError, match=r'mpi3d_real.npz not found in the manual dir'):
    tfds_builders.build(tfds_builders.MipaeMpi3d, 'tiny', str(tmp_path / 'd'),
                        str(tmp_path / 'm'))


def test_example_keys_differ_per_split():
  a = jax.random.key_data(tfds_builders.example_key(0, 'train', 0))
  b = jax.random.key_data(tfds_builders.example_key(0, 'test', 0))
  assert not np.array_equal(np.asarray(a), np.asarray(b))
