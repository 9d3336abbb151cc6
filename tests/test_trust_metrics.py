"""Trust, second round: a negative held-out bound reported as 0 (the raw bound kept), a
MIG sample below the validated size flagged, and a stage whose gradients died warned about
once and flagged in the evaluation. Small inputs only (no training, no probe fits)."""

import json
import logging
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import stub_scoring

from mipae_jax import batches, configs, evaluate, logger, parallel, stages
from mipae_jax.configs import tiny
from mipae_jax.factors import FactorGroup
from mipae_jax.metrics import mig, probe

# ------------------------------------------- 3. Negative mutual information, small samples.

BOUNDS = {'I_fc_zc': 2.0, 'I_fc_zp': 0.1, 'I_fp_zc': 0.3, 'I_fp_zp': -0.95}


def test_a_negative_bound_is_reported_as_zero_and_the_raw_bound_kept():
  out = mig.mig_from_bounds(BOUNDS, 4.0, 6.0)
  assert out['I_fp_zp'] == 0.0 and out['clipped'] == ['I_fp_zp']
  assert {k: out[k] for k in ('I_fc_zc', 'I_fc_zp', 'I_fp_zc')} == {
      'I_fc_zc': 2.0, 'I_fc_zp': 0.1, 'I_fp_zc': 0.3}
  assert out['raw']['I_fp_zp'] == -0.95
  # The MIG uses the clipped values; the raw one is kept beside it.
  assert out['pose_term'] == pytest.approx((0.0 - 0.3) / 6.0)
  assert out['mig'] == pytest.approx(0.5 * 1.9 / 4.0 + 0.5 * (0.0 - 0.3) / 6.0)
  assert out['raw']['mig'] == pytest.approx(0.5 * 1.9 / 4.0 + 0.5 * (-0.95 - 0.3) / 6.0)
  assert min(out[k] for k in mig.MI_KEYS) >= 0.0


def test_no_bound_below_zero_changes_nothing():
  out = mig.mig_from_bounds(dict(BOUNDS, I_fp_zp=0.8), 4.0, 6.0)
  assert out['clipped'] == []
  assert {k: out[k] for k in mig.MI_KEYS} == {k: out['raw'][k] for k in mig.MI_KEYS}
  assert out['mig'] == out['raw']['mig']


def test_probe_mig_reports_the_clipped_mis_and_mig(monkeypatch):
  """probe_mig's four bounds go through `mig_from_bounds` (the probes stubbed)."""
  n = 100
  z_c, z_p = np.zeros((n, 3)), np.ones((n, 2))
  content, pose = np.zeros((n, 1), int), np.zeros((n, 1), int)
  groups_c, groups_p = (FactorGroup('c', (0,)),), (FactorGroup('p', (0,), ordinal=True),)

  def fake_bound(z, f, groups, config):
    del f, config
    key = f'I_{"fc" if groups is groups_c else "fp"}_{"zc" if z is z_c else "zp"}'
    return {'mi': BOUNDS[key], 'H': 5.0, 'groups': {g.name: {'H': 5.0} for g in groups},
            'epochs': 1, 'n_test': 20, 'seconds': 0.0}

  monkeypatch.setattr(mig.probe, 'mi_lower_bound', fake_bound)
  out = mig.probe_mig(z_c, z_p, content, pose, groups_c, groups_p)
  assert out['I_fp_zp'] == 0.0 and out['raw']['I_fp_zp'] == -0.95
  assert out['clipped'] == ['I_fp_zp']
  assert out['mig'] == pytest.approx(0.5 * 1.9 / 5.0 + 0.5 * (0.0 - 0.3) / 5.0)


def _mig(n_samples=20_000, bounds=None) -> dict:
  """`results['mig']` shaped as `evaluate.disentanglement` returns it, made-up numbers."""
  pm = mig.mig_from_bounds(bounds or dict(BOUNDS, I_fp_zp=0.8), 5.0, 6.0)
  pm.update(probe='chain', C_fc=5.0, C_fp=6.0, H_fc=5.5, H_fp=6.9, groups_fc=['shape'],
            groups_fp=['x', 'y'], estimator='probe', n_samples=n_samples)
  return {'estimator': 'probe', 'n_samples': n_samples, 'content_factors': ['shape'],
          'pose_factors': ['x', 'y'], 'probe': pm,
          'linear_r2': {'pose_from_zc': 0.0, 'pose_from_zp': 0.95, 'content_from_zp': 0.0,
                        'content_from_zc': 0.9},
          'classic': {'mig': 0.3}}


def _report(mig_result, warnings=None) -> str:
  results = {'ae_step': 2, 'lstm_step': None, 'mig': mig_result}
  if warnings is not None:
    results['warnings'] = warnings
  return evaluate.render_report(configs.get('tiny'), results)


def test_the_report_marks_a_clipped_mi_and_gives_the_raw_bound():
  report = _report(_mig(bounds=BOUNDS))
  row = next(x for x in report.splitlines() if x.startswith('| probe'))
  assert '| 0.0000 (clipped) |' in row and row.count('(clipped)') == 1
  note = next(x for x in report.splitlines() if x.startswith('Clipped:'))
  assert 'I(fp;zp) = -0.9500' in note and 'mig.probe.raw' in note
  assert '(clipped)' not in _report(_mig())


def test_the_report_warns_when_mig_samples_is_below_the_validated_size():
  report = _report(_mig(n_samples=100))
  warning = [x for x in report.splitlines() if x.startswith('**Warning:**')]
  assert len(warning) == 1
  line = warning[0]
  assert 'eval.mig_samples = 100 ' in line and f'{probe.MIN_STABLE_SAMPLES:,}' in line
  assert 'not stable' in line and 'not comparable' in line
  assert '200x fewer' in line and 'scored on 20 held-out frames' in line
  # It comes before the numbers it qualifies, and not at the validated size.
  assert report.index('**Warning:**') < report.index('## Disentanglement')
  assert '**Warning:**' not in _report(_mig(n_samples=probe.MIN_STABLE_SAMPLES))
  # A results dict that carries the warning (metrics.json) shows it once, not twice.
  small = evaluate.sample_size_warning(100)
  assert _report(_mig(n_samples=100), [small]).count('**Warning:**') == 1


def test_a_small_sample_is_one_logged_warning(monkeypatch, caplog):
  class Stop(Exception):
    pass

  def stop(*args):
    raise Stop

  monkeypatch.setattr(evaluate, 'encode_static', stop)
  config = configs.get('tiny')
  config.eval.mig_samples = 100
  with caplog.at_level(logging.WARNING, logger='mipae_jax.evaluate'), pytest.raises(Stop):
    evaluate.disentanglement(config, {}, None)
  assert [r.levelno for r in caplog.records] == [logging.WARNING]
  assert 'eval.mig_samples = 100 is below 20,000 frames' in caplog.records[0].getMessage()
  caplog.clear()
  config.eval.mig_samples = probe.MIN_STABLE_SAMPLES
  with caplog.at_level(logging.WARNING, logger='mipae_jax.evaluate'), pytest.raises(Stop):
    evaluate.disentanglement(config, {}, None)
  assert not caplog.records


# --------------------------------------------------------------------------- 8. A dead LSTM.


def _run_lstm(tmp_path, num_steps, values, **train):
  """`stages.run_stage` as the LSTM stage with a stand-in step (metrics from
  `values(step)`)."""
  config = tiny.get_config()
  config.train.update(train)

  def step_fn(state, batch, key):
    del batch, key
    return {'step': state['step'] + 1}, values(int(state['step']) + 1)

  init = {'step': jnp.zeros((), jnp.int32)}
  return stages.run_stage(config, str(tmp_path), 'lstm', init, step_fn,
                          batches.KeyedBatches(lambda key: None, jax.random.key(0)),
                          jax.random.key(1), num_steps, parallel.local_mesh())


def _dies_after_step_one(s):
  """An LSTM whose first update saturated it: a gradient at step 1, none after."""
  return {'lstm_loss': jnp.float32(1.0), 'grad_norm': jnp.float32(1.0 if s == 1 else 0.0)}


def test_a_network_dead_for_many_intervals_is_one_warning_naming_the_cause(tmp_path, caplog):
  with caplog.at_level(logging.WARNING, logger='mipae_jax.stages'):
    _run_lstm(tmp_path, 7, _dies_after_step_one, log_every=1, ckpt_every=7)
  warnings = [r.getMessage() for r in caplog.records if 'exactly 0' in r.getMessage()]
  assert len(warnings) == 1, warnings  # Six zero intervals (steps 2-7), one warning.
  assert warnings[0].startswith('lstm: grad_norm was exactly 0 at every step from 2 to 2: ')
  assert 'learning rate too large' in warnings[0] and 'saturated' in warnings[0]
  assert '--config.lstm_optim.lr' in warnings[0]  # What to try.
  # Every zero interval is recorded (counted) in metrics.jsonl.
  records = logger.read_records(str(tmp_path))
  assert [r['step'] for r in records if 'grad_norm_zero_from' in r] == [2, 3, 4, 5, 6, 7]
  flags = logger.zero_gradient_flags(records)
  assert flags == {'lstm': {'from_step': 2, 'to_step': 7, 'intervals': 6,
                            'norms': ['grad_norm'], 'trained_before': True}}


def test_a_norm_zero_at_one_log_step_only_is_not_recorded(tmp_path):
  values = lambda s: {'lstm_loss': jnp.float32(1.0), 'grad_norm': jnp.float32(s % 2)}
  _run_lstm(tmp_path, 4, values, log_every=2, ckpt_every=4)
  records = logger.read_records(str(tmp_path))
  assert records[-1]['grad_norm'] == 0.0  # Step 4's value, but step 3 moved.
  assert logger.zero_gradient_flags(records) == {}


def test_the_evaluation_flags_the_stage_in_metrics_json_and_the_report(tmp_path, monkeypatch):
  _run_lstm(tmp_path, 7, _dies_after_step_one, log_every=1, ckpt_every=7)
  # Everything but the flag's path from metrics.jsonl into eval/ is stubbed.
  stub_scoring(monkeypatch, evaluate, _mig())
  evaluate.evaluate(configs.get('tiny'), str(tmp_path), types.SimpleNamespace(step=2),
                    source=object())
  with open(tmp_path / 'eval' / 'metrics.json') as f:
    saved = json.load(f)
  (flag,) = saved['warnings']
  assert {k: flag[k] for k in ('kind', 'stage', 'from_step', 'intervals', 'norms')} == {
      'kind': 'zero_gradients', 'stage': 'lstm', 'from_step': 2, 'intervals': 6,
      'norms': ['grad_norm']}
  report = (tmp_path / 'eval' / 'report.md').read_text()
  (line,) = [x for x in report.splitlines() if x.startswith('**Warning:**')]
  assert "the lstm stage's gradients were zero from step 2" in line
  assert 'not meaningful' in line and '--config.lstm_optim.lr' in line


def test_a_run_without_zero_gradients_has_no_flag(tmp_path):
  values = lambda s: {'lstm_loss': jnp.float32(1.0), 'grad_norm': jnp.float32(1.0)}
  _run_lstm(tmp_path, 3, values, log_every=1, ckpt_every=3)
  assert evaluate.training_warnings(str(tmp_path)) == []
  assert evaluate.training_warnings(str(tmp_path / 'nothing')) == []
