"""Critic objectives and MI bounds against NumPy, and the MI machinery as an estimator."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mipae_jax import configuration, losses, models, train
from mipae_jax.configs import tiny


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


def loss_config(clip=5.0):
  return ml_collections.ConfigDict({'smile_clip': clip})


def critic_loss(name, tj, tm, clip=5.0):
  return losses.variant(name).critic_loss(losses.Scores(tj, tm), loss_config(clip), None)


def model_penalty(name, tj, tm, clip=5.0):
  return losses.variant(name).penalty(losses.Scores(tj, tm), loss_config(clip), None)


def test_variant_registry(scores):
  tj, tm = scores
  assert critic_loss('mipae', tj, tm) == -losses.js_critic_objective(tj, tm)
  assert critic_loss('smile_song_ermon', tj, tm) == -losses.js_critic_objective(tj, tm)
  assert model_penalty('smile_song_ermon', tj, tm, 2.0) == (
      losses.smile_song_ermon_bound(tj, tm, 2.0))
  assert critic_loss('drnet', tj, tm) == losses.drnet_critic_loss(tj, tm)
  assert model_penalty('mipae', tj, tm) == losses.nwj_with_js_critic(tj, tm)
  assert model_penalty('drnet', tj, tm) == losses.drnet_confusion_loss(tj)
  assert model_penalty('nwj', tj, tm) == losses.nwj_bound(tj, tm)
  assert model_penalty('dv', tj, tm) == losses.dv_bound(tj, tm)
  assert set(losses.names()) >= {'mipae', 'drnet', 'smile', 'smile_song_ermon', 'nwj', 'dv',
                                 'infonce'}
  assert losses.variant('smile').check(loss_config(0.0)) == (
      'config.loss.smile_clip=0.0 is not allowed: expected a number > 0.')
  assert losses.variant('mipae').check(loss_config(0.0)) is None  # mipae has no clip.
  with pytest.raises(ValueError, match="config.loss.name must be one of"):
    losses.variant('infogan')


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
  np.testing.assert_allclose(model_penalty('smile', tj, tm, clip), published_penalty,
                             rtol=1e-5)
  np.testing.assert_allclose(critic_loss('smile', tj, tm, clip),
                             published_critic, rtol=1e-5)
  song_ermon = tj.astype(np.float64).mean() - np.log(np.exp(cm.astype(np.float64)).mean())
  np.testing.assert_allclose(model_penalty('smile_song_ermon', tj, tm, clip),
                             song_ermon, rtol=1e-5)
  # The two differ by the clamp of the joint mean (many joint scores exceed 5 here).
  gap = song_ermon - published_penalty
  assert abs(gap - (tj.astype(np.float64).mean() - cj.mean())) < 1e-4
  assert abs(gap) > 0.1
  # The published penalty never exceeds 2 * clip, and clamped joint pairs get no gradient.
  assert float(losses.smile_bound(tj + 100, tm, clip)) <= 2 * clip + 1e-5
  g = jax.grad(lambda t: model_penalty('smile', t, tm, clip))(jnp.asarray(tj))
  assert np.all(np.asarray(g)[np.abs(tj) > clip] == 0)
  assert np.all(np.asarray(g)[np.abs(tj) < clip] > 0)
  g = jax.grad(lambda t: critic_loss('smile', t, tm, clip))(jnp.asarray(tj))
  assert np.all(np.asarray(g)[np.abs(tj) > clip] == 0)


def gaussian_pairs(key, n, rho, dim):
  k1, k2 = jax.random.split(key)
  a = jax.random.normal(k1, (n, dim))
  return a, rho * a + jnp.sqrt(1 - rho ** 2) * jax.random.normal(k2, (n, dim))


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


def train_critic(rho, name='mipae', dim=2, steps=2000, batch=512, seed=0):
  """Trains a critic on Gaussian pose pairs with variant `name`'s critic loss (its scores
  built as the train step builds them); returns its penalty on 50,000 fresh pairs."""
  variant = losses.variant(name)
  critic = models.Critic(width=128)
  key = jax.random.key(seed)
  params = critic.init(key, jnp.zeros((1, dim)), jnp.zeros((1, dim)))['params']
  tx = optax.adam(1e-3)
  lc = loss_config()

  def step(rho, carry, k):
    params, opt = carry
    k1, k2 = jax.random.split(k)
    a, b = gaussian_pairs(k1, batch, rho, dim)

    def loss(p):
      s = train.critic_scores(lambda x, y: critic.apply({'params': p}, x, y), a, b, k2,
                              variant.scores)
      return variant.critic_loss(s, lc, None)

    g = jax.grad(loss)(params)
    updates, opt = tx.update(g, opt, params)
    return (optax.apply_updates(params, updates), opt), None

  # Thousands of steps in one program: compiled at XLA's full optimisation even where
  # XLA_FLAGS lower it (as `make test` does, for its many small programs), which runs them
  # about twice as fast (the InfoNCE case: 26 s -> 16 s on 2 CPU cores). rho is an
  # argument, so the cases of one variant lower to one program: each call builds a fresh
  # jit, and the persistent compilation cache (tests/conftest.py) finds it compiled.
  run = jax.jit(lambda c, ks, rho: jax.lax.scan(functools.partial(step, rho), c, ks)[0],
                compiler_options={'xla_backend_optimization_level': 3})
  params, _ = run((params, tx.init(params)), jax.random.split(key, steps), jnp.float32(rho))
  n = 50_000 if variant.scores == 'pairs' else batch
  a, b = gaussian_pairs(jax.random.key(99), n, rho, dim)
  s = train.critic_scores(lambda x, y: critic.apply({'params': params}, x, y), a, b,
                          jax.random.key(7), variant.scores)
  return float(variant.penalty(s, lc, None))


@pytest.mark.parametrize('rho', [0.0, 0.5, 0.9])
def test_js_trained_critic_gives_mi_penalty_near_truth(rho):
  """The MIPAE penalty, with a critic trained only on the JS objective, estimates MI."""
  true_mi = -0.5 * 2 * np.log(1 - rho ** 2)
  estimate = train_critic(rho)
  if rho == 0.0:
    assert abs(estimate) < 0.02
  else:
    assert abs(estimate - true_mi) < 0.1 * true_mi, (estimate, true_mi)


@pytest.mark.parametrize('name,batch,steps', [('nwj', 512, 2000), ('dv', 512, 2000),
                                              ('infonce', 64, 1000)])
def test_bound_variants_train_their_critic_to_the_known_mi(name, batch, steps):
  """NWJ, DV and InfoNCE as selectable penalties: a critic trained through the registry on
  the variant's own objective (InfoNCE on the 64 x 64 score matrix, at most log 64 = 4.2
  nats) reads off the MI of correlated Gaussians (rho 0.9: 1.66 nats)."""
  true_mi = -0.5 * 2 * np.log(1 - 0.9 ** 2)
  tol = 0.1
  estimate = train_critic(0.9, name, batch=batch, steps=steps)
  assert abs(estimate - true_mi) < tol * true_mi, (name, estimate, true_mi)


def test_a_new_bound_is_one_function_and_one_registry_line():
  """A toy bound registered alone is selectable from the config, validated, and trains:
  the AE step minimises its penalty (here the mean joint score) with its own field."""
  name = 'toy_mean_joint'
  losses.register(name, losses.Variant(
      critic_loss=lambda s, lc, ax: -losses.js_critic_objective(s.joint, s.marg, ax),
      penalty=lambda s, lc, ax: lc.toy_scale * losses.global_mean(s.joint, ax),
      check=lambda lc: None if lc.toy_scale > 0 else 'config.loss.toy_scale must be > 0.'))
  try:
    cfg = tiny.get_config()
    cfg.loss.name = name
    cfg.loss.toy_scale = 3.0
    configuration.validate(cfg)
    st = train.create_train_state(cfg, jax.random.key(0))
    video = jax.random.uniform(jax.random.key(1), (cfg.batch_size, 4, 32, 32, 3))
    _, (_, terms) = train.model_losses(st.model.params, st.batch_stats, st.critic.params,
                                       video, 1, 0, jax.random.key(2),
                                       nets=models.networks(cfg), loss_config=cfg.loss)
    nets = models.build_models(cfg.model, cfg.data)
    pose = lambda x: nets['pose_encoder'].apply(
        {'params': st.model.params['pose_encoder'],
         'batch_stats': st.batch_stats['pose_encoder']}, x, train=True,
        mutable=['batch_stats'])[0]
    joint = nets['critic'].apply({'params': st.critic.params}, pose(video[:, 1]),
                                 pose(video[:, 0]))
    np.testing.assert_allclose(terms['mi_loss'], 3.0 * np.mean(joint), rtol=1e-4)
    cfg.loss.toy_scale = -1.0
    with pytest.raises(ValueError, match='toy_scale must be > 0'):
      configuration.validate(cfg)
  finally:
    del losses.VARIANTS[name]


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
  once a marginal score passes ~17 (sigmoid rounds to 1 in float32); docs/fixes.md says so."""
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
