"""Critic objectives and MI bounds against NumPy, and the MI machinery as an estimator."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mipae_jax import losses, models


def softplus(x):
  return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def log_sigmoid(x):
  return -softplus(-x)


@pytest.fixture
def scores():
  rng = np.random.default_rng(0)
  return rng.normal(1.0, 2.0, 64).astype(np.float32), rng.normal(-1.0, 2.0, 64).astype(
      np.float32)


def test_bounds_match_numpy(scores):
  tj, tm = scores
  sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))
  np.testing.assert_allclose(
      losses.js_critic_objective(tj, tm),
      np.mean(np.log(sig(tj))) + np.mean(np.log(1 - sig(tm))), rtol=1e-5)
  np.testing.assert_allclose(
      losses.drnet_critic_loss(tj, tm),
      0.5 * (-np.mean(np.log(sig(tj))) - np.mean(np.log(1 - sig(tm)))), rtol=1e-5)
  np.testing.assert_allclose(losses.nwj_with_js_critic(tj, tm),
                             tj.mean() - np.exp(tm).mean() + 1, rtol=1e-5)
  np.testing.assert_allclose(losses.nwj_bound(tj, tm),
                             tj.mean() - np.exp(tm - 1).mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.dv_bound(tj, tm),
                             tj.mean() - np.log(np.exp(tm.astype(np.float64)).mean()),
                             rtol=1e-5)
  np.testing.assert_allclose(
      losses.smile_song_ermon_bound(tj, tm, clip=1.5),
      tj.mean() - np.log(np.exp(np.clip(tm, -1.5, 1.5)).mean()), rtol=1e-5)
  p = sig(tj)
  np.testing.assert_allclose(losses.drnet_confusion_loss(tj),
                             np.mean(-0.5 * np.log(p) - 0.5 * np.log(1 - p)), rtol=1e-5)
  s = np.random.default_rng(1).normal(size=(8, 8))
  ref = np.mean(np.diag(s) - np.log(np.exp(s).mean(axis=1)))
  np.testing.assert_allclose(losses.infonce_bound(jnp.asarray(s)), ref, rtol=1e-5)


def test_variant_dispatch(scores):
  tj, tm = scores
  assert losses.critic_loss('mipae', tj, tm) == -losses.js_critic_objective(tj, tm)
  assert losses.critic_loss('smile_song_ermon', tj, tm) == -losses.js_critic_objective(tj, tm)
  assert losses.model_penalty('smile_song_ermon', tj, tm, 2.0) == (
      losses.smile_song_ermon_bound(tj, tm, 2.0))
  assert losses.critic_loss('drnet', tj, tm) == losses.drnet_critic_loss(tj, tm)
  assert losses.model_penalty('mipae', tj, tm) == losses.nwj_with_js_critic(tj, tm)
  assert losses.model_penalty('drnet', tj, tm) == losses.drnet_confusion_loss(tj)
  with pytest.raises(ValueError, match="config.loss.name must be one of"):
    losses.critic_loss('infogan', tj, tm)


@pytest.mark.parametrize('std', [4.0, 12.0])
def test_smile_is_the_published_clamp_of_both_scores(std):
  """The published code clamps joint and marginal scores to [-clip, clip] in the critic's
  JS objective and in the model's DV penalty; Song & Ermon's SMILE clamps only the
  marginal scores of the penalty and trains the critic on raw scores."""
  rng = np.random.default_rng(int(std))
  tj = rng.normal(2.0, std, 4096).astype(np.float32)
  tm = rng.normal(-2.0, std, 4096).astype(np.float32)
  clip = 5.0
  cj, cm = np.clip(tj, -clip, clip).astype(np.float64), np.clip(tm, -clip, clip)
  sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))
  published_penalty = cj.mean() - np.log(np.exp(cm.astype(np.float64)).mean())
  published_critic = -(np.mean(np.log(sig(cj))) + np.mean(np.log(1 - sig(cm))))
  np.testing.assert_allclose(losses.model_penalty('smile', tj, tm, clip), published_penalty,
                             rtol=1e-5)
  np.testing.assert_allclose(losses.critic_loss('smile', tj, tm, smile_clip=clip),
                             published_critic, rtol=1e-5)
  song_ermon = tj.astype(np.float64).mean() - np.log(np.exp(cm.astype(np.float64)).mean())
  np.testing.assert_allclose(losses.model_penalty('smile_song_ermon', tj, tm, clip),
                             song_ermon, rtol=1e-5)
  # The two differ by the clamp of the joint mean (many joint scores exceed 5 here).
  gap = song_ermon - published_penalty
  assert abs(gap - (tj.astype(np.float64).mean() - cj.mean())) < 1e-4
  assert abs(gap) > 0.1
  # The published penalty never exceeds 2 * clip, and clamped joint pairs get no gradient.
  assert float(losses.smile_bound(tj + 100, tm, clip)) <= 2 * clip + 1e-5
  g = jax.grad(lambda t: losses.model_penalty('smile', t, tm, clip))(jnp.asarray(tj))
  assert np.all(np.asarray(g)[np.abs(tj) > clip] == 0)
  assert np.all(np.asarray(g)[np.abs(tj) < clip] > 0)
  g = jax.grad(lambda t: losses.critic_loss('smile', t, tm, smile_clip=clip))(jnp.asarray(tj))
  assert np.all(np.asarray(g)[np.abs(tj) > clip] == 0)


def gaussian_pairs(key, n, rho, dim):
  k1, k2 = jax.random.split(key)
  a = jax.random.normal(k1, (n, dim))
  return a, rho * a + np.sqrt(1 - rho ** 2) * jax.random.normal(k2, (n, dim))


def optimal_log_ratio(a, b, rho):
  """log p(a, b) / p(a) p(b) for unit Gaussians with per-dimension correlation rho."""
  s = 1 - rho ** 2
  q = (a ** 2 + b ** 2 - 2 * rho * a * b) / s - a ** 2 - b ** 2
  return jnp.sum(-0.5 * np.log(s) - 0.5 * q, axis=-1)


@pytest.mark.parametrize('rho', [0.5, 0.9])
def test_bounds_with_the_optimal_critic_recover_known_mi(rho):
  dim, n = 2, 200_000
  true_mi = -0.5 * dim * np.log(1 - rho ** 2)
  a, b = gaussian_pairs(jax.random.key(0), n, rho, dim)
  b_neg = jnp.roll(b, 1, axis=0)
  tj, tm = optimal_log_ratio(a, b, rho), optimal_log_ratio(a, b_neg, rho)
  for bound in (losses.nwj_with_js_critic, losses.dv_bound, losses.smile_bound,
                losses.smile_song_ermon_bound):
    assert abs(float(bound(tj, tm)) - true_mi) < 0.05 * true_mi, bound.__name__
  # NWJ's own optimum is T* + 1.
  assert abs(float(losses.nwj_bound(tj + 1, tm + 1)) - true_mi) < 0.05 * true_mi
  # InfoNCE on a 512 x 512 score matrix (bounded by log 512, far above these MIs).
  a, b = a[:512], b[:512]
  s = optimal_log_ratio(a[:, None], b[None, :], rho)
  assert abs(float(losses.infonce_bound(s)) - true_mi) < 0.15 * true_mi


def train_js_critic(rho, dim=2, steps=2000, batch=512, seed=0):
  critic = models.Critic(width=128)
  key = jax.random.key(seed)
  params = critic.init(key, jnp.zeros((1, dim)), jnp.zeros((1, dim)))['params']
  tx = optax.adam(1e-3)

  def step(carry, k):
    params, opt = carry
    k1, k2 = jax.random.split(k)
    a, b = gaussian_pairs(k1, batch, rho, dim)
    b_neg = b[jax.random.permutation(k2, batch)]

    def loss(p):
      return -losses.js_critic_objective(critic.apply({'params': p}, a, b),
                                         critic.apply({'params': p}, a, b_neg))

    g = jax.grad(loss)(params)
    updates, opt = tx.update(g, opt, params)
    return (optax.apply_updates(params, updates), opt), None

  run = jax.jit(lambda c, ks: jax.lax.scan(step, c, ks)[0])
  params, _ = run((params, tx.init(params)), jax.random.split(key, steps))
  a, b = gaussian_pairs(jax.random.key(99), 50_000, rho, dim)
  tj = critic.apply({'params': params}, a, b)
  tm = critic.apply({'params': params}, a, jnp.roll(b, 1, axis=0))
  return float(losses.nwj_with_js_critic(tj, tm))


@pytest.mark.parametrize('rho', [0.0, 0.5, 0.9])
def test_js_trained_critic_gives_mi_penalty_near_truth(rho):
  """The MIPAE penalty, with a critic trained only on the JS objective, estimates MI."""
  true_mi = -0.5 * 2 * np.log(1 - rho ** 2)
  estimate = train_js_critic(rho)
  if rho == 0.0:
    assert abs(estimate) < 0.02
  else:
    assert abs(estimate - true_mi) < 0.1 * true_mi, (estimate, true_mi)


def test_global_reductions_do_not_depend_on_device_split():
  x = np.random.default_rng(0).normal(size=(8,)).astype(np.float32)
  f = jax.pmap(lambda v: (losses.global_mean(v, 'd'), losses.global_logmeanexp(v, 'd')),
               axis_name='d')
  m, lme = f(x.reshape(4, 2))
  np.testing.assert_allclose(m, x.mean(), rtol=1e-5)
  np.testing.assert_allclose(lme, np.log(np.exp(x.astype(np.float64)).mean()), rtol=1e-5)


def test_drnet_bce_exact_where_the_published_sigmoid_bce_saturates():
  """DRNET's critic BCE is softplus here, exact at any score. The published sigmoid-then-
  BCE (log clamped at -100) agrees below |T| ~ 15 and jumps to 100 with zero gradient
  once a marginal score passes ~17 (sigmoid rounds to 1 in float32); the README says so."""
  torch = pytest.importorskip('torch')
  for t in (5.0, 17.0, 20.0, 50.0):
    t_marg = jnp.full((4,), t, jnp.float32)
    t_joint = jnp.full((4,), 100.0, jnp.float32)  # Joint pairs scored correctly: ~0 loss.
    ours = float(losses.drnet_critic_loss(t_joint, t_marg))
    assert ours == pytest.approx(0.5 * np.log1p(np.exp(t)), rel=1e-6)
    grad = float(jax.grad(losses.drnet_critic_loss, argnums=1)(t_joint, t_marg)[0])
    assert grad == pytest.approx(0.5 / 4 / (1 + np.exp(-t)), rel=1e-5)  # sigmoid(T) / 8.
    tt = torch.full((4,), t, requires_grad=True)
    published = torch.nn.functional.binary_cross_entropy(torch.sigmoid(tt), torch.zeros(4))
    published.backward()
    if t >= 17:
      assert published.item() == 100.0 and tt.grad.abs().max().item() == 0.0
    else:
      assert published.item() == pytest.approx(2 * ours, rel=1e-4)
