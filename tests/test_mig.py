"""MIG estimators against synthetic data with known answers (docs/method.md section 5)."""

import json

import numpy as np
import pytest
from scipy import special

from mipae_jax.metrics import knn, mig, validation

N = 1500  # small enough for brute-force references, large enough for 10% accuracy


def _naive_ksg(x, z, k=3):
  """O(N^2) KSG with the brute path's norms: max(|dx|_2, |dz|_2)."""
  x, z = knn.standardise(x), knn.standardise(z)
  n = len(x)
  dx = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  dz = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
  np.fill_diagonal(dx, np.inf)
  np.fill_diagonal(dz, np.inf)
  eps = np.sort(np.maximum(dx, dz), axis=1)[:, k - 1]
  nx, nz = (dx < eps[:, None]).sum(1), (dz < eps[:, None]).sum(1)
  return special.digamma(k) + special.digamma(n) - np.mean(
      special.digamma(nx + 1) + special.digamma(nz + 1))


def _naive_ross(y, z, k=3):
  """O(N^2) Ross (2014) estimator, Euclidean norm, every sample kept."""
  z = knn.standardise(z)
  n = len(y)
  d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  radius = np.sort(np.where(y[:, None] == y[None], d, np.inf), axis=1)[:, k - 1]
  m = (d <= radius[:, None]).sum(1)
  return (special.digamma(n) - np.mean(special.digamma(np.bincount(y)[y]))
          + special.digamma(k) - np.mean(special.digamma(m)))


@pytest.fixture(scope='module')
def sprites():
  return validation.sprite_like(N, seed=0)


# ----------------------------------------------------------------------------- self-check cases


def test_copy_latents_score_near_max(sprites):
  content, pose, z_c, z_p = sprites
  res = mig.paper_mig(z_c, z_p, content, pose)
  assert res['n_samples'] == N
  assert res['estimator_fc'] == 'ross' and res['estimator_fp'] == 'ksg'
  assert res['I_fc_zc'] == pytest.approx(res['H_fc'], rel=0.1)
  assert res['pose_term'] > 0.75
  assert res['mig'] > 0.85
  assert abs(res['I_fc_zp']) < 0.1 and abs(res['I_fp_zc']) < 0.1


def test_independent_latents_give_zero_mi(sprites):
  content, pose, z_c, z_p = sprites
  rng = np.random.default_rng(1)
  res = mig.paper_mig(rng.standard_normal(z_c.shape), rng.standard_normal(z_p.shape),
                      content, pose)
  for key in ('I_fc_zc', 'I_fc_zp', 'I_fp_zc', 'I_fp_zp'):
    assert abs(res[key]) < 0.1, (key, res[key])
  assert abs(res['mig']) < 0.05


def test_swapped_latents_score_negative(sprites):
  content, pose, z_c, z_p = sprites
  good = mig.paper_mig(z_c, z_p, content, pose)
  swapped = mig.paper_mig(z_p, z_c, content, pose)
  assert swapped['mig'] < -0.5
  # The published |difference| would have scored both the same.
  assert swapped['mig'] == pytest.approx(-good['mig'], abs=0.05)


def test_unique_pose_labels_use_every_sample(sprites):
  content, _, z_c, _ = sprites
  rng = np.random.default_rng(2)
  cells = rng.choice(32 ** 4, N, replace=False)
  pose = np.stack(np.unravel_index(cells, (32,) * 4), 1)
  z_p = pose / 32 + 0.002 * rng.standard_normal(pose.shape)
  res = mig.paper_mig(z_c, z_p, content, pose, pose_cardinality=(32,) * 4)
  assert res['n_labels_fp'] == N and res['singleton_fraction_fp'] == 1.0
  assert res['n_samples'] == N and res['estimator_fp'] == 'ksg'
  assert res['pose_term'] > 0.8
  assert res['H_log_cardinality_fp'] == pytest.approx(4 * np.log(32))
  assert abs(res['I_fp_zc']) < 0.1


def test_discrete_mode_refuses_singleton_labels():
  rng = np.random.default_rng(0)
  labels = np.arange(200)  # every label once
  with pytest.raises(ValueError, match='once'):
    knn.mi_discrete_continuous(labels, rng.standard_normal((200, 2)))


@pytest.mark.parametrize('dim,snr,backend', [(1, 1.0, 'tree'), (2, 3.0, 'tree'),
                                             (1, 9.0, 'brute'), (2, 1.0, 'brute')])
def test_ksg_gaussian_channel(dim, snr, backend):
  x, z, truth = validation.gaussian_channel(3000, dim, snr, seed=dim)
  est = knn.mi_ksg(x, z, backend=backend)
  assert est == pytest.approx(truth, rel=0.1)


@pytest.mark.parametrize('classes,spacing,backend', [(4, 2.0, 'tree'), (8, 1.0, 'tree'),
                                                     (4, 2.0, 'brute')])
def test_ross_label_channel(classes, spacing, backend):
  y, z, truth = validation.label_channel(3000, classes, spacing, seed=classes)
  est = knn.mi_discrete_continuous(y, z, backend=backend)
  assert est == pytest.approx(truth, rel=0.1)


def test_brute_paths_match_naive_reference():
  rng = np.random.default_rng(3)
  n = 700
  x = rng.standard_normal((n, 3))
  z = np.hstack([x @ rng.standard_normal((3, 20)), 0.5 * rng.standard_normal((n, 20))])
  assert knn.mi_ksg(x, z, backend='brute') == pytest.approx(_naive_ksg(x, z), abs=1e-9)
  y = rng.integers(0, 5, n)
  zz = rng.standard_normal((5, 30))[y] + rng.standard_normal((n, 30))
  ref = _naive_ross(y, zz)
  assert knn.mi_discrete_continuous(y, zz, backend='brute') == pytest.approx(ref, abs=1e-9)
  assert knn.mi_discrete_continuous(y, zz, backend='tree') == pytest.approx(ref, abs=1e-9)


def test_brute_pass_block_boundaries(monkeypatch):
  # Several row blocks, a partial last block, classes straddling blocks, two threads.
  monkeypatch.setattr(knn, '_BLOCK_ROWS', 128)
  rng = np.random.default_rng(4)
  n = 600
  y = rng.integers(0, 7, n)
  z = rng.standard_normal((7, 24))[y] + rng.standard_normal((n, 24))
  assert knn.mi_discrete_continuous(y, z, backend='brute') == pytest.approx(
      _naive_ross(y, z), abs=1e-9)
  x = rng.standard_normal((n, 2))
  assert knn.mi_ksg(x, z, backend='brute') == pytest.approx(_naive_ksg(x, z), abs=1e-9)


def test_ksg_with_jitter_reduces_to_ross_on_populated_labels():
  y, z, _ = validation.label_channel(3000, 4, 2.0, seed=5)
  ross = knn.mi_discrete_continuous(y, z)
  ksg = knn.mi_ksg(knn.jitter_factors(y, 1e-6), z)
  assert ksg == pytest.approx(ross, abs=0.05)


# ----------------------------------------------------------------------------- entropy


def test_grassberger_entropy_uniform_label():
  rng = np.random.default_rng(0)
  m = 200
  labels = rng.integers(0, m, 1000)  # 5 samples per label on average
  est = knn.entropy_grassberger(labels)
  assert est == pytest.approx(np.log(m), abs=0.1)
  # The plug-in estimate is visibly biased low at this sampling depth.
  assert knn.entropy_plugin(labels) < est - 0.1


def test_grassberger_joint_rows():
  f = np.array([[0, 0], [0, 1], [0, 0], [1, 1]])
  assert knn.entropy_grassberger(f) == pytest.approx(
      knn.entropy_grassberger(np.array([0, 1, 0, 2])))


def test_ksg_self_entropy_populated_grid():
  rng = np.random.default_rng(1)
  f = rng.integers(0, 4, (4000, 2))  # 16 cells, ~250 samples each
  assert knn.entropy_ksg_self(f) == pytest.approx(np.log(16), rel=0.05)


# ----------------------------------------------------------------------------- classic MIG


def test_classic_mig_perfect_latent_is_one():
  rng = np.random.default_rng(0)
  f = np.stack([rng.integers(0, 5, 4000), rng.integers(0, 8, 4000)], 1)
  z = np.hstack([f.astype(float), rng.standard_normal((4000, 3))])
  det = mig.classic_mig_details(z, f)
  assert det['mi'].shape == (5, 2)
  assert det['mig'] == pytest.approx(1.0, abs=0.02)


def test_classic_mig_scrambled_latent_is_near_zero():
  rng = np.random.default_rng(1)
  f = np.stack([rng.integers(0, 5, 4000), rng.integers(0, 8, 4000)], 1)
  z = rng.standard_normal((4000, 5))
  assert abs(mig.classic_mig(z, f)) < 0.02


def test_classic_mig_entangled_latent_has_zero_gap():
  rng = np.random.default_rng(2)
  f = rng.integers(0, 6, (4000, 1))
  z = np.hstack([f, f]).astype(float)  # two dims carry the same factor: no gap
  assert mig.classic_mig(z, f) == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------- CLI


def test_selfcheck_cli_passes(capsys):
  assert validation.main(['--knn_only', '--n', '1500']) == 0
  out = json.loads(capsys.readouterr().out)
  assert all(case['ok'] for case in out.values())
  assert {'copy', 'independent', 'swapped', 'unique_pose_labels'} <= set(out)


def test_selfcheck_cli_runs_the_probe_suite_and_fails_on_a_failed_check(monkeypatch, capsys):
  """The probe suite itself runs in tests/test_probe_mig.py; here only the CLI's wiring:
  its table is printed and one failed check makes the exit status 1."""
  calls = []

  def fake_suite(n):
    calls.append(n)
    res = {case: {'mig': v, 'mig_2n': v, 'I_fp_zc': 0.0, 'ok': True}
           for case, v in validation.EXPECTED.items()}
    res['projection_2'] = {'I_fc_Pz': 1.0, 'I_fc_z': 2.0, 'I_fp_Pz': 1.0, 'I_fp_z': 2.0,
                           'ok': False}
    res['seconds'] = 1.0
    return res

  monkeypatch.setattr(validation, 'run_suite', fake_suite)
  assert validation.main(['--n', '1500']) == 1
  assert calls == [1500]
  out = capsys.readouterr()
  assert '| leaky | 0.5 |' in out.out and 'probe:projection_2' in out.err


def test_ross_chebyshev_norm_also_accurate():
  y, z, truth = validation.label_channel(3000, 4, 2.0, seed=6)
  z2 = np.hstack([z, z + 0.5 * np.random.default_rng(0).standard_normal(z.shape)])
  est_e = knn.mi_discrete_continuous(y, z2)
  est_c = knn.mi_discrete_continuous(y, z2, norm='chebyshev')
  assert est_c == pytest.approx(est_e, abs=0.05)
  with pytest.raises(ValueError):
    knn.mi_discrete_continuous(y, z2, backend='brute', norm='chebyshev')

