"""Train steps: gradient isolation, device-count invariance, no retracing, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mipae_jax import configuration, models, parallel, train
from mipae_jax.configs import tiny
from mipae_jax.data import sharding


def squares(batch, frames, size, channels, seed=0):
  """Videos of a bright square bouncing around: `[B, T, H, W, C]` in [0, 1]."""
  rng = np.random.default_rng(seed)
  v = np.zeros((batch, frames, size, size, channels), np.float32)
  side = size // 4
  for b in range(batch):
    pos, vel = rng.integers(0, size - side, 2), rng.integers(-2, 3, 2)
    colour = rng.uniform(0.3, 1.0, channels)
    for t in range(frames):
      v[b, t, pos[0]:pos[0] + side, pos[1]:pos[1] + side] = colour
      for d in range(2):
        if not 0 <= pos[d] + vel[d] <= size - side:
          vel[d] = -vel[d]
      pos = pos + vel
  return v


def batch_for(config, seed=0):
  d = config.data
  t = d.input_frames + d.target_frames
  mk = lambda s: jnp.asarray(squares(config.batch_size, t, d.image_size, d.channels, s))
  return {'video': mk(seed), 'critic_video': mk(seed + 1)}


def leaf_pairs(a, b):
  return zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)


def tree_max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in leaf_pairs(a, b))


def trees_equal(a, b):
  return all(bool(jnp.array_equal(x, y)) for x, y in leaf_pairs(a, b))


@pytest.fixture(scope='module')
def config():
  return tiny.get_config()


@pytest.fixture(scope='module')
def state(config):
  return train.create_train_state(config, jax.random.key(0))


def test_critic_step_changes_only_the_critic(config, state):
  video = batch_for(config)['critic_video']
  step = jax.jit(functools.partial(train.critic_step, nets=models.networks(config),
                                   loss_config=config.loss))
  new, metrics = step(state, video, jax.random.key(1))
  assert trees_equal(new.model.params, state.model.params)
  assert trees_equal(new.model.opt_state, state.model.opt_state)
  assert not trees_equal(new.critic.params, state.critic.params)
  # Only the pose encoder ran, so only its BatchNorm statistics move.
  assert not trees_equal(new.batch_stats['pose_encoder'], state.batch_stats['pose_encoder'])
  assert trees_equal(new.batch_stats['content_encoder'], state.batch_stats['content_encoder'])
  assert np.isfinite(float(metrics['critic_loss']))


def test_model_step_changes_only_the_autoencoder(config, state):
  video = batch_for(config)['video']
  step = jax.jit(functools.partial(train.model_step, nets=models.networks(config),
                                   loss_config=config.loss))
  new, _ = step(state, video, jax.random.key(1))
  assert trees_equal(new.critic.params, state.critic.params)
  assert trees_equal(new.critic.opt_state, state.critic.opt_state)
  for part in models.AE_PARTS:
    assert not trees_equal(new.model.params[part], state.model.params[part]), part


def test_stopped_branches_receive_no_gradient(config, state):
  """x[r] reaches the loss only through the stopped E_p(x[r]); x[k] reaches L_sim only
  through the stopped E_c(x[k]). Their input gradients must be exactly zero."""
  video = batch_for(config)['video']
  k, r = 1, 2

  def term(v, name):
    _, (_, terms) = train.model_losses(
        state.model.params, state.batch_stats, state.critic.params, v, k, r,
        jax.random.key(3), nets=models.networks(config), loss_config=config.loss)
    return terms[name]

  g_total = jax.jit(jax.grad(lambda v: term(v, 'loss')))(video)
  assert float(jnp.abs(g_total[:, r]).max()) == 0.0
  assert float(jnp.abs(g_total[:, k]).max()) > 0.0
  g_sim = jax.jit(jax.grad(lambda v: term(v, 'sim_loss')))(video)
  assert float(jnp.abs(g_sim[:, k]).max()) == 0.0
  assert float(jnp.abs(g_sim[:, 0]).max()) > 0.0


def test_every_autoencoder_parameter_has_a_real_gradient(config, state):
  """No parameter the loss cannot see. A bias before a BatchNorm would be one: its
  gradient is exactly zero in exact arithmetic, ~1e-12 of rounding noise in float32
  (which Adam would still turn into full steps). Real gradients here are >= ~1e-6."""
  video = batch_for(config)['video']
  grads = jax.jit(jax.grad(lambda p: train.model_losses(
      p, state.batch_stats, state.critic.params, video, 1, 2, jax.random.key(3),
      nets=models.networks(config), loss_config=config.loss)[0]))(state.model.params)
  rms = {jax.tree_util.keystr(path): float(jnp.sqrt(jnp.mean(g ** 2)))
         for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
  assert min(rms.values()) > 1e-8, sorted(rms.items(), key=lambda kv: kv[1])[:3]


def test_one_step_is_the_same_on_one_and_four_devices(config):
  """jit on one device vs shard_map and pmap over 4 devices, same global batch.

  Adam is set to lr = eps = 1 for this comparison only, so that an update is about the
  gradient itself and the parameters compare gradients at full scale: with eps = 1e-8
  Adam's first step is lr * sign(gradient), which turns the summation-order noise of a
  near-zero gradient element into a full step. A real error (a missing or doubled
  average) moves parameters by ~0.1; summation order moves them by ~2.5e-5 (3e-6 with
  the former one-pass BatchNorm statistics, although a lone BatchNorm layer now differs
  less between layouts: 1.4e-6 forward and 7.6e-6 backward, against 9.8e-6 and 4e-5).
  (Convolutions before a BatchNorm have no bias: its gradient, exactly zero, was pure
  noise.)
  """
  assert jax.device_count() == 4
  cfg = tiny.get_config()
  cfg.optim.lr = cfg.optim.eps = 1.0
  st = train.create_train_state(cfg, jax.random.key(0))
  batch, key = batch_for(cfg), jax.random.key(7)
  ref, ref_m = parallel.make_train_step(cfg, mode='jit', donate=False)(st, batch, key)
  sm, sm_m = parallel.make_train_step(cfg, mode='shard_map', donate=False)(st, batch, key)
  pm, pm_m = parallel.make_train_step(cfg, mode='pmap', donate=False)(
      parallel.replicate(st), sharding.shard_batch(batch, 4), key)
  pm, pm_m = parallel.unreplicate(pm), parallel.unreplicate(pm_m)
  for other, other_m in ((sm, sm_m), (pm, pm_m)):
    assert tree_max_diff(ref.model.params, other.model.params) < 5e-5
    assert tree_max_diff(ref.critic.params, other.critic.params) < 5e-5
    assert tree_max_diff(ref.batch_stats, other.batch_stats) < 1e-5
    for name in ref_m:
      np.testing.assert_allclose(other_m[name], ref_m[name], rtol=1e-4, atol=1e-5,
                                 err_msg=name)


def test_lstm_step_is_the_same_on_one_and_four_devices(config, state):
  ls = train.create_lstm_state(config, jax.random.key(1))
  ae = train.autoencoder_variables(state)
  batch, key = batch_for(config), jax.random.key(2)
  a, am = parallel.make_train_step(config, 'lstm', mode='jit', donate=False)(ls, ae, batch, key)
  b, bm = parallel.make_train_step(config, 'lstm', mode='shard_map', donate=False)(
      ls, ae, batch, key)
  assert tree_max_diff(a.lstm.params, b.lstm.params) < 1e-5
  np.testing.assert_allclose(am['lstm_loss'], bm['lstm_loss'], rtol=1e-5)


def test_batch_must_divide_over_devices():
  cfg = tiny.get_config()
  cfg.batch_size = 6
  with pytest.raises(ValueError, match='batch_size=6 does not divide over 4 devices'):
    parallel.make_train_step(cfg, mode='shard_map')


def test_training_learns_and_never_retraces(config):
  """100 steps on one fixed batch: reconstruction falls, then the LSTM loss falls; each
  jitted step is compiled once."""
  state = train.create_train_state(config, jax.random.key(0))
  batch, key = batch_for(config), jax.random.key(1)
  step = parallel.make_train_step(config, mode='jit')
  recon = []
  for _ in range(100):
    state, m = step(state, batch, key)
    recon.append(float(m['recon_loss']))
  assert step._cache_size() == 1
  assert int(state.step) == 100
  assert np.mean(recon[-5:]) < 0.3 * np.mean(recon[:5]), recon[::10]

  # A larger learning rate than the paper's 2e-4 so that 100 steps show the descent.
  lstm_config = tiny.get_config()
  lstm_config.lstm_optim.lr = 3e-3
  ls = train.create_lstm_state(lstm_config, jax.random.key(2))
  ae = train.autoencoder_variables(state)
  lstep = parallel.make_train_step(lstm_config, 'lstm', mode='jit')
  lstm_losses = []
  for _ in range(100):
    ls, m = lstep(ls, ae, batch, key)
    lstm_losses.append(float(m['lstm_loss']))
  assert lstep._cache_size() == 1
  assert lstm_losses[-1] < 0.5 * lstm_losses[0], lstm_losses[::10]


def test_infonce_step_is_the_same_on_one_and_four_devices():
  """InfoNCE scores every local pose against the gathered global batch; its joint pairs
  sit at each device's offset, so sharding must not change the step."""
  cfg = tiny.get_config()
  cfg.loss.name = 'infonce'
  cfg.optim.lr = cfg.optim.eps = 1.0  # As in the test above: compare gradients at scale.
  st = train.create_train_state(cfg, jax.random.key(0))
  batch, key = batch_for(cfg), jax.random.key(7)
  ref, ref_m = parallel.make_train_step(cfg, mode='jit', donate=False)(st, batch, key)
  sm, sm_m = parallel.make_train_step(cfg, mode='shard_map', donate=False)(st, batch, key)
  assert tree_max_diff(ref.model.params, sm.model.params) < 5e-5
  assert tree_max_diff(ref.critic.params, sm.critic.params) < 5e-5
  for name in ('critic_loss', 'critic_mi', 'mi_loss'):
    np.testing.assert_allclose(sm_m[name], ref_m[name], rtol=1e-4, atol=1e-5, err_msg=name)
  # At most log(global batch): the bound sees all of it, not one device's share.
  assert float(ref_m['mi_loss']) <= np.log(cfg.batch_size) + 1e-5


@pytest.mark.parametrize('loss_name', ['drnet', 'smile', 'nwj', 'dv', 'infonce'])
def test_loss_variants_step(loss_name):
  cfg = tiny.get_config()
  cfg.loss.name = loss_name
  st = train.create_train_state(cfg, jax.random.key(0))
  st, m = parallel.make_train_step(cfg, mode='jit')(st, batch_for(cfg), jax.random.key(1))
  assert all(np.isfinite(float(v)) for v in m.values())
  assert set(m) >= {'loss', 'recon_loss', 'sim_loss', 'mi_loss', 'critic_loss', 'critic_mi',
                    'grad_norm', 'critic_grad_norm'}


def test_bfloat16_compute_keeps_float32_parameters():
  cfg = tiny.get_config()
  cfg.model.dtype = 'bfloat16'
  st = train.create_train_state(cfg, jax.random.key(0))
  st, m = parallel.make_train_step(cfg, mode='jit')(st, batch_for(cfg), jax.random.key(1))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(st.model.params))
  assert all(np.isfinite(float(v)) for v in m.values())


def test_reconstruction_losses_l2_l1_and_bce():
  """On an all-zero target the decoder's sigmoid output r is in (0, 1): L2 is mean(r^2),
  L1 (the published --recon_loss_type l1) mean(r), BCE mean(-log(1 - r)); so
  mean(r)^2 <= L2 < L1 < BCE (Jensen, and -log(1 - r) > r), on the same networks."""
  cfg = tiny.get_config()
  st = train.create_train_state(cfg, jax.random.key(0))
  video = jnp.zeros((cfg.batch_size, 4, 32, 32, 3))
  out = {}
  for recon in ('l2', 'l1', 'bce'):
    cfg.loss.recon = recon
    _, (_, terms) = train.model_losses(st.model.params, st.batch_stats, st.critic.params,
                                       video, 1, 0, jax.random.key(1),
                                       nets=models.networks(cfg), loss_config=cfg.loss)
    out[recon] = float(terms['recon_loss'])
    # One term per colour channel (one sprite each), averaging to the loss itself.
    per_channel = [float(terms[f'recon_loss_ch{c}']) for c in range(3)]
    assert np.mean(per_channel) == pytest.approx(out[recon], rel=1e-5)
  assert out['l1'] ** 2 <= out['l2'] < out['l1'] < out['bce']
  assert out['l1'] == pytest.approx(0.5, abs=0.1)  # A fresh sigmoid decoder is near 0.5.
  assert out['bce'] == pytest.approx(np.log(2), abs=0.2)


def test_foreground_weight_scales_lit_pixels_only():
  """loss.fg_weight = w weighs a pixel's error by 1 + (w - 1) * target: on a target whose
  channel 0 is all lit and the others black, the weighted L2 is (w e0 + e1 + e2) / 3 for
  the unweighted per-channel errors e_c, which are logged unchanged."""
  cfg = tiny.get_config()
  st = train.create_train_state(cfg, jax.random.key(0))
  video = jnp.zeros((cfg.batch_size, 4, 32, 32, 3)).at[..., 0].set(1.0)

  def terms_for(w):
    cfg.loss.fg_weight = w
    _, (_, terms) = train.model_losses(st.model.params, st.batch_stats, st.critic.params,
                                       video, 1, 0, jax.random.key(1),
                                       nets=models.networks(cfg), loss_config=cfg.loss)
    return {k: float(v) for k, v in terms.items()}

  plain, weighted = terms_for(1.0), terms_for(10.0)
  e = [plain[f'recon_loss_ch{c}'] for c in range(3)]
  assert [weighted[f'recon_loss_ch{c}'] for c in range(3)] == pytest.approx(e, rel=1e-6)
  assert plain['recon_loss'] == pytest.approx(np.mean(e), rel=1e-5)
  assert weighted['recon_loss'] == pytest.approx((10 * e[0] + e[1] + e[2]) / 3, rel=1e-5)
  cfg.loss.fg_weight = 0.5
  with pytest.raises(ValueError, match='loss.fg_weight'):
    configuration.validate(cfg)


def test_foreground_weight_anneals_linearly_to_one():
  """loss.fg_anneal_start/steps: fg_weight until the start, then linearly to 1 over the
  ramp and 1 after; without a ramp the weight is the constant (a Python float, the
  program traced before annealing existed). In the loss, the weight at a step is the one
  a constant fg_weight of that value gives."""
  cfg = tiny.get_config()
  cfg.loss.fg_weight = 10.0
  assert train.foreground_weight(cfg.loss, jnp.asarray(500)) == 10.0
  assert isinstance(train.foreground_weight(cfg.loss, jnp.asarray(500)), float)
  cfg.loss.fg_anneal_start, cfg.loss.fg_anneal_steps = 100, 300
  at = {s: float(train.foreground_weight(cfg.loss, jnp.asarray(s)))
        for s in (0, 100, 175, 250, 400, 10_000)}
  assert at == pytest.approx({0: 10.0, 100: 10.0, 175: 7.75, 250: 5.5, 400: 1.0,
                              10_000: 1.0})
  st = train.create_train_state(cfg, jax.random.key(0))
  video = jnp.zeros((cfg.batch_size, 4, 32, 32, 3)).at[..., 0].set(1.0)

  def recon(loss_config, step):
    _, (_, terms) = train.model_losses(st.model.params, st.batch_stats, st.critic.params,
                                       video, 1, 0, jax.random.key(1),
                                       nets=models.networks(cfg), loss_config=loss_config,
                                       step=step)
    return terms

  annealed = recon(cfg.loss, jnp.asarray(250))
  assert float(annealed['fg_weight']) == pytest.approx(5.5)
  constant = cfg.loss.copy_and_resolve_references()
  constant.fg_weight, constant.fg_anneal_steps = 5.5, 0
  assert float(annealed['recon_loss']) == pytest.approx(
      float(recon(constant, jnp.asarray(250))['recon_loss']), rel=1e-6)
  # That a train step reads the weight at its state's step: tests/test_branch_run.py.
  cfg.loss.fg_anneal_steps = -1
  with pytest.raises(ValueError, match='loss.fg_anneal_steps'):
    configuration.validate(cfg)


def test_lstm_on_cached_codes_equals_the_lstm_on_the_videos(config, state):
  """config.lstm.code_pool: three LSTM iterations on codes encoded once equal three on the
  same videos encoded in each iteration (the published way): same batches, same
  parameters, same losses."""
  ae = train.autoencoder_variables(state)
  d = config.data
  pool = jax.random.uniform(jax.random.key(5), (8, d.input_frames + d.target_frames,
                                                d.image_size, d.image_size, d.channels))
  h_c, h_p = jax.jit(train.lstm_encoder(config))(ae, pool)
  video_step = parallel.make_train_step(config, 'lstm', 'jit', donate=False)
  code_step = parallel.make_train_step(config, 'lstm_codes', 'jit', donate=False)
  a = b = train.create_lstm_state(config, jax.random.key(1))
  for i in range(3):
    idx = jax.random.randint(jax.random.key(10 + i), (config.batch_size,), 0, 8)
    a, am = video_step(a, ae, {'video': pool[idx]}, jax.random.key(0))
    b, bm = code_step(b, {'h_c': h_c[idx], 'h_p': h_p[idx]}, jax.random.key(0))
    np.testing.assert_allclose(bm['lstm_loss'], am['lstm_loss'], rtol=1e-6)
  assert tree_max_diff(a.lstm.params, b.lstm.params) < 1e-6
  assert tree_max_diff(a.lstm.params, train.create_lstm_state(
      config, jax.random.key(1)).lstm.params) > 1e-4  # It did train.


def test_initialisation_is_bit_identical_at_the_compile_levels(config):
  """`create_train_state` compiles its one-off program at LLVM level 1 to save compile
  time (compiler.ONCE_OPTIONS); the initial parameters must be those of level 2 to the
  bit, or a run's start would depend on that choice."""
  from mipae_jax import compiler

  init = jax.jit(functools.partial(train.init_autoencoder_variables, config))
  lowered = init.lower(jax.random.key(7))
  fast = lowered.compile(compiler_options=compiler.ONCE_OPTIONS)(jax.random.key(7))
  full = lowered.compile(compiler_options={'xla_backend_optimization_level': 2})(
      jax.random.key(7))
  leaves = jax.tree.leaves(full)
  assert len(leaves) > 20
  for a, b in zip(leaves, jax.tree.leaves(fast), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_initialisation_traces_inside_another_trace(config, monkeypatch):
  """Readers take the state's shapes by `jax.eval_shape(create_train_state)`, which nests
  the initialisation's jit: it must not carry compiler options there (JAX refuses them),
  whatever XLA_FLAGS say (the suite sets a level, which turns the options off)."""
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
  shapes = jax.eval_shape(functools.partial(train.create_train_state, config),
                          jax.random.key(0))
  assert shapes.model.params['decoder']
  lstm = jax.eval_shape(functools.partial(train.create_lstm_state, config), jax.random.key(0))
  assert lstm.lstm.params
