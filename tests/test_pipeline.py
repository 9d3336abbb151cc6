"""The whole product on the tiny config: stages, files, exact resume, refusals, NaN stop."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from mipae_jax import batches, checkpoint, config_record, data, parallel, pipeline, train
from mipae_jax.configs import tiny
from mipae_jax.logger import NonFiniteError


def leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def test_train_and_evaluate_writes_everything(tmp_path):
  config = tiny.get_config()
  workdir = str(tmp_path / 'run')
  results = pipeline.train_and_evaluate(config, workdir)
  assert results['ae_step'] == 2 and results['lstm_step'] == 2
  for name in ('config.json', 'metrics.jsonl', 'eval/report.md', 'eval/metrics.json',
               'eval/analogy.png', 'eval/reconstruction.png', 'eval/prediction.gif',
               'eval/prediction.png', 'eval/ssim.png', 'eval/psnr.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
  for name in os.listdir(os.path.join(workdir, 'eval')):
    if name.endswith(('.png', '.gif')):
      with Image.open(os.path.join(workdir, 'eval', name)) as im:
        im.verify()  # A complete, decodable image file.
  assert any(f.startswith('events.out.tfevents')
             for f in os.listdir(os.path.join(workdir, 'tensorboard')))
  assert checkpoint.CheckpointStore(workdir, 'ae', enabled=False).all_steps() == [1, 2]
  assert checkpoint.CheckpointStore(workdir, 'lstm', enabled=False).all_steps() == [1, 2]
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert {x['stage'] for x in lines} == {'ae', 'lstm', 'eval'}
  assert all(np.isfinite(x['recon_loss']) for x in lines if x['stage'] == 'ae')
  with open(os.path.join(workdir, 'eval/metrics.json')) as f:
    saved = json.load(f)
  assert saved['mig']['n_samples'] == config.eval.mig_samples
  assert len(saved['prediction']['ssim_mean']) == config.eval.future_frames
  assert np.all(np.isfinite(saved['prediction']['ssim_mean']))
  report = open(os.path.join(workdir, 'eval/report.md')).read()
  assert '| I(fc;zc) | I(fc;zp) | I(fp;zc) | I(fp;zp) | MIG |' in report
  # A second run of the same command finds every stage done and only re-evaluates.
  again = pipeline.train_and_evaluate(config, workdir)
  assert again['timings']['ae']['steps_this_run'] == 0
  assert again['mig']['paper']['mig'] == pytest.approx(results['mig']['paper']['mig'])
  assert again['mig']['probe']['mig'] == results['mig']['probe']['mig']  # Seeded probes.
  assert '| probe (held-out lower bound) |' in report and '| paper protocol (kNN) |' in report
  assert set(saved['mig']['linear_r2']) == {'pose_from_zc', 'pose_from_zp', 'content_from_zp',
                                            'content_from_zc'}
  # A run recorded before the estimator options existed is evaluated with their defaults
  # (evaluate_workdir reads its config with config_record.load_config).
  path = os.path.join(workdir, 'config.json')
  with open(path) as f:
    recorded = json.load(f)
  for name in ('mig_estimator', 'paper_protocol', 'knn_content_mode', 'knn_pose_mode'):
    del recorded['eval'][name]
  with open(path, 'w') as f:
    json.dump(recorded, f)
  old = config_record.load_config(workdir).eval
  assert (old.mig_estimator, old.paper_protocol, old.knn_content_mode,
          old.knn_pose_mode) == ('probe', True, 'continuous', 'continuous')


def test_resumed_run_is_bit_identical(tmp_path):
  """4 straight steps == 2 steps, stop, resume, 2 more (same workdir). The straight run
  also profiles steps 2-3, which must change nothing but leave a trace and a summary."""
  config = tiny.get_config()
  config.train.ae_steps = 4
  config.train.ckpt_every = 2
  config.train.profile_steps = 2
  straight = pipeline.train_autoencoder(config, str(tmp_path / 'a')).state
  profile = tmp_path / 'a' / 'profile' / 'ae'
  assert list(profile.rglob('*.xplane.pb')) and list(profile.rglob('*.trace.json.gz'))
  summary = (profile / 'summary.md').read_text()
  assert 'over 2 steps' in summary and '| **all traced ops** |' in summary
  config.train.profile_steps = 0
  resumed_dir = str(tmp_path / 'b')
  config.train.ae_steps = 2
  pipeline.train_autoencoder(config, resumed_dir)
  config.train.ae_steps = 4
  result = pipeline.train_autoencoder(config, resumed_dir)
  assert result.steps_run == 2
  assert leaves_equal(straight, result.state)


def test_lstm_stage_on_a_code_pool_trains_and_resumes_exactly(tmp_path):
  """config.lstm.code_pool = N: the stage encodes N streamed videos once and trains on
  their codes; the pool is a pure function of the run, so 2 + 2 steps resumed equal 4."""
  config = tiny.get_config()
  config.lstm.code_pool = 3 * config.batch_size
  config.train.lstm_steps = 4
  config.train.ckpt_every = 2
  ae = pipeline.train_autoencoder(config, str(tmp_path / 'a')).state
  mesh = parallel.local_mesh()
  ae_vars = batches.replicate_on_mesh(train.autoencoder_variables(ae), mesh)
  key = jax.random.key(3)
  source = data.make_source(config.data)
  codes = batches.encode_code_pool(config, source, ae_vars, mesh, key)
  d = config.data
  assert codes['h_c'].shape == (config.lstm.code_pool, config.model.content_dim)
  assert codes['h_p'].shape == (config.lstm.code_pool, d.input_frames + d.target_frames,
                                config.model.pose_dim)
  assert leaves_equal(codes, batches.encode_code_pool(config, source, ae_vars, mesh, key))
  straight = pipeline.train_lstm(config, str(tmp_path / 'a'), ae).state
  config.train.lstm_steps = 2
  pipeline.train_autoencoder(config, str(tmp_path / 'b'))
  pipeline.train_lstm(config, str(tmp_path / 'b'), ae)
  config.train.lstm_steps = 4
  resumed = pipeline.train_lstm(config, str(tmp_path / 'b'), ae)
  assert resumed.steps_run == 2
  assert leaves_equal(straight, resumed.state)
  records = [json.loads(x) for x in open(tmp_path / 'a' / 'metrics.jsonl')]
  assert all(np.isfinite(r['lstm_loss']) for r in records if r['stage'] == 'lstm')


def test_refuses_to_resume_under_a_foreign_config(tmp_path):
  config = tiny.get_config()
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  config_record.record_config(workdir, config)
  other = tiny.get_config()
  other.model.nf = 16
  with pytest.raises(config_record.ConfigMismatchError, match=r'model\.nf: 8 -> 16'):
    pipeline.train_and_evaluate(other, workdir)


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  real = parallel.make_train_step

  def poisoned(config, stage='ae', *args, **kwargs):
    step = real(config, stage, *args, **kwargs)

    def wrapped(state, *rest):
      state, metrics = step(state, *rest)
      if int(state.step) == 3:
        metrics = {**metrics, 'sim_loss': metrics['sim_loss'] * np.nan}
      return state, metrics
    return wrapped

  monkeypatch.setattr(parallel, 'make_train_step', poisoned)
  config = tiny.get_config()
  config.train.ae_steps = 5
  workdir = str(tmp_path / 'run')
  with pytest.raises(NonFiniteError, match=r'ae stage step 3: sim_loss=nan'):
    pipeline.train_autoencoder(config, workdir)
  assert checkpoint.CheckpointStore(workdir, 'ae', enabled=False).latest_step() == 2


def test_lstm_stage_needs_a_trained_autoencoder(tmp_path):
  with pytest.raises(FileNotFoundError, match='No autoencoder checkpoint'):
    pipeline.train_lstm(tiny.get_config(), str(tmp_path / 'empty'))
