"""Training from a prepared TFDS dataset: prepare, both stages, exact resume mid-epoch,
the dataset record, and the refusals of a missing, partial or mismatched dataset."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mipae_jax import batches, config_record, configuration, errors, parallel, pipeline, train
from mipae_jax.configs import tiny
from mipae_jax.data import prepare, tfds_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """A tiny prepared Moving dSprites (12 train, 6 test videos) and a config reading it."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  config = tiny.get_config()
  name = prepare.prepare(config.data, data_dir, 12, 6)
  config.data.pipeline = 'tfds'
  config.data.tfds_name = name
  config.data.data_dir = data_dir
  return config


def test_both_stages_and_evaluation_run_from_the_prepared_dataset(prepared, tmp_path):
  config = prepared
  configuration.validate(config)
  workdir = str(tmp_path / 'run')
  results = pipeline.train_and_evaluate(config, workdir)
  assert results['ae_step'] == 2 and results['lstm_step'] == 2
  with open(os.path.join(workdir, config_record.DATASET_FILE)) as f:
    assert json.load(f) == {'name': config.data.tfds_name, 'version': '1.0.0',
                            'splits': {'train': 12, 'test': 6}}
  records = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  # An AE step reads 2 x batch 8 = 16 records of 12: the second step is in epoch 1.
  assert [r['epoch'] for r in records if r['stage'] == 'ae'] == [0, 1]
  # Evaluation reads the test split: its test videos are the split's 6, in order.
  source = tfds_source.TfdsVideos(config.data)
  v, f = source.test_videos(config.eval.seed, 100)
  assert v.shape == (6, 4, 32, 32, 3) and v.dtype == np.float32
  np.testing.assert_array_equal(f['pose'][2], source.sources['test'][2]['pose'])


def test_batches_follow_a_seeded_epoch_shuffle_and_split_over_devices(prepared):
  """Step s of the LSTM stage reads records 8s..8s+7 of the shuffled order, each video
  once per epoch (12), the next epoch reshuffled; the batch is split over the 4 devices.
  The AE stage reads two batches a step (its own and the critic's)."""
  config = prepared
  source = tfds_source.TfdsVideos(config.data)
  mesh = parallel.local_mesh()
  reader = tfds_source.TrainBatches(config, source.sources['train'], mesh, 'lstm', 3)
  seen = []
  for step in range(3):
    batch = reader.for_step(step)
    assert set(batch) == {'video'} and batch['video'].shape == (8, 4, 32, 32, 3)
    assert batch['video'].dtype == np.float32
    assert len(batch['video'].sharding.device_set) == jax.device_count()
    seen.append(np.asarray(batch['video']))
  assert [reader.epoch(s) for s in range(3)] == [0, 0, 1]
  stored = np.stack([source._read('train', [i])[0][0] for i in range(12)])
  which = [int(np.argmin(np.abs(stored - v).sum(axis=(1, 2, 3, 4))))
           for part in seen for v in part]
  assert sorted(which[:12]) == list(range(12))  # Epoch 0: every video once.
  assert sorted(which[12:]) == list(range(12)) and which[12:] != which[:12]  # Reshuffled.
  again = tfds_source.TrainBatches(config, source.sources['train'], mesh, 'lstm', 3)
  again.restore({'next_index': 1}, 1)
  np.testing.assert_array_equal(np.asarray(again.for_step(1)['video']), seen[1])
  with pytest.raises(RuntimeError, match='asked for step 0, the iterator is at 2'):
    again.for_step(0)
  ae = tfds_source.TrainBatches(config, source.sources['train'], mesh, 'ae', 1).for_step(0)
  assert set(ae) == {'video', 'critic_video'}
  np.testing.assert_array_equal(np.asarray(ae['video']), seen[0])


def test_a_run_stopped_mid_epoch_resumes_bit_identically(prepared, tmp_path):
  config = prepared.copy_and_resolve_references()
  config.train.ae_steps = 3
  config.train.ckpt_every = 1
  straight = pipeline.train_autoencoder(config, str(tmp_path / 'a')).state
  config.train.ae_steps = 1  # Stops inside epoch 1 (16 records read, 12 per epoch).
  pipeline.train_autoencoder(config, str(tmp_path / 'b'))
  config.train.ae_steps = 3
  resumed = pipeline.train_autoencoder(config, str(tmp_path / 'b'))
  assert resumed.steps_run == 2
  assert leaves_equal(straight, resumed.state)


def test_missing_partial_and_mismatched_datasets_are_refused(prepared, tmp_path):
  config = prepared.copy_and_resolve_references()
  config.data.data_dir = str(tmp_path / 'empty')
  with pytest.raises(errors.DataNotFoundError, match=r'nothing is there.*mipae_jax\.data\.'
                     r'prepare --config=YOUR_CONFIG --data_dir=.*empty'):
    configuration.validate(config)
  partial = tmp_path / 'partial' / config.data.tfds_name / 'incomplete.ABC_1.0.0'
  partial.mkdir(parents=True)
  config.data.data_dir = str(tmp_path / 'partial')
  with pytest.raises(errors.DataNotFoundError, match='only an unfinished build is there'):
    configuration.validate(config)
  other = prepared.copy_and_resolve_references()
  other.data.target_frames = 5
  with pytest.raises(errors.ConfigError, match=r'videos of 4 frames x 3 channels, but the '
                     r'config asks for input_frames \+ target_frames = 7'):
    configuration.validate(other)
  other = prepared.copy_and_resolve_references()
  other.data.tfds_name = ''
  with pytest.raises(errors.ConfigError, match='needs config.data.tfds_name'):
    configuration.validate(other)
  # A workdir refuses to go on with another prepared dataset.
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / config_record.DATASET_FILE).write_text(json.dumps(
      {'name': 'mipae_moving_dsprites/other', 'version': '1.0.0',
       'splits': {'train': 99, 'test': 9}}))
  with pytest.raises(errors.DataError, match='was trained on the prepared dataset'):
    config_record.check_dataset_record(str(workdir), prepared)


def test_prepare_command_prints_the_overrides(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'mipae_jax.data.prepare',
       '--config=tiny', f'--data_dir={tmp_path}',
       '--train_videos=3', '--test_videos=2'],
      capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  last = out.stdout.strip().splitlines()[-1]
  assert last.strip() == (
      f'--config.data.pipeline=tfds --config.data.tfds_name='
      f'mipae_moving_dsprites/f4-c3-o2-split0-seed0-n3x2 --config.data.data_dir={tmp_path}')
  bad = subprocess.run(
      [sys.executable, '-m', 'mipae_jax.data.prepare',
       '--config=tiny', f'--data_dir={tmp_path}',
       '--train_videos=0'], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
  assert bad.returncode == 2 and '--train_videos=0' in bad.stderr


def test_lstm_of_a_tfds_run_trains_on_cached_codes_exactly_as_on_the_videos(prepared):
  """A tfds run encodes its train split once; its LSTM iterations, on those codes in the
  reader's order, equal iterations that read and encode the videos in that order."""
  config = prepared
  mesh = parallel.local_mesh()
  source = tfds_source.TfdsVideos(config.data)
  ae = batches.replicate_on_mesh(train.autoencoder_variables(
      train.create_train_state(config, jax.random.key(0))), mesh)
  encode = jax.jit(train.lstm_encoder(config))
  codes = tfds_source.encode_split(config, source.sources['train'], ae, mesh, encode)
  assert codes['h_p'].shape == (12, 4, config.model.pose_dim)
  videos = tfds_source.TrainBatches(config, source.sources['train'], mesh, 'lstm', 3)
  cached = tfds_source.TrainBatches(config, source.sources['train'], mesh, 'lstm', 3,
                                    codes=codes)
  video_step = parallel.make_train_step(config, 'lstm', 'shard_map', mesh, donate=False)
  code_step = parallel.make_train_step(config, 'lstm_codes', 'shard_map', mesh, donate=False)
  a = b = batches.replicate_on_mesh(train.create_lstm_state(
      config, jax.random.key(1)), mesh)
  for step in range(3):
    a, am = video_step(a, ae, videos.for_step(step), jax.random.key(0))
    b, bm = code_step(b, cached.for_step(step), jax.random.key(0))
    np.testing.assert_allclose(bm['lstm_loss'], am['lstm_loss'], rtol=1e-6)
  for x, y in zip(jax.tree.leaves(a.lstm.params), jax.tree.leaves(b.lstm.params),
                  strict=True):
    np.testing.assert_allclose(x, y, atol=1e-6)
  bad = prepared.copy_and_resolve_references()
  bad.lstm.code_pool = 8
  with pytest.raises(errors.ConfigError, match='already trains the LSTM on the cached'):
    configuration.validate(bad)
