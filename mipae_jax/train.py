"""Training state and the pure per-device train steps of both stages.

Stage 1 (autoencoder): `ae_train_step` = critic ascent, then descent on E_c, E_p, D.
Stage 2 (pose LSTM): `lstm_train_step`, with the autoencoder frozen.

Each step is written once, per device, with explicit collectives over `axis_name`
(None on one device). `mipae_jax.parallel.make_train_step` wraps them for `jax.jit`,
`jax.pmap` or `jax.shard_map`. All randomness is derived from `fold_in(key, step)` and
is shared by every device (frame indices, the global permutation of negatives), so a
step's result does not depend on the device count and a resumed run is identical.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax import lax

from mipae_jax import compiler, losses, models, predict


@flax.struct.dataclass
class AEState:
  """Autoencoder stage: two optimiser states side by side, plus BatchNorm statistics.

  model.params: {'content_encoder', 'pose_encoder', 'decoder'} (one Adam state).
  critic.params: the critic's parameters (its own Adam state).
  batch_stats: running BatchNorm statistics of the three networks in `model`.
  step: the stage's iteration count, the one every reader uses (keys, checkpoints, logs).
  `model.step` and `critic.step` are flax's own counters; they stay because checkpoints
  hold them (an abstract target without them would not restore an older checkpoint), and
  a converted run has them at 0 (`convert.autoencoder_state`).
  """
  step: jax.Array
  model: train_state.TrainState
  critic: train_state.TrainState
  batch_stats: Any


@flax.struct.dataclass
class LSTMState:
  step: jax.Array
  lstm: train_state.TrainState


@compiler.per_config
def adam(optim_config) -> optax.GradientTransformation:
  """Adam of `optim_config` (lr, b1, b2, eps); one object per setting, since a train
  state holds it as static structure: a new one would make every jitted step trace its
  program again for an equal state."""
  return optax.adam(optim_config.lr, b1=optim_config.b1, b2=optim_config.b2,
                    eps=optim_config.eps)


def new_train_state(params, tx) -> train_state.TrainState:
  """A flax TrainState whose step is a strongly typed int32 array (a Python int there
  would change type after the first update and force a second compilation)."""
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
  return state.replace(step=jnp.zeros((), jnp.int32))


def _frame_shape(config):
  d = config.data
  return (1, d.image_size, d.image_size, d.channels)


def init_autoencoder_variables(config, key) -> tuple[dict, dict, dict]:
  """Initial (params, batch_stats) of E_c, E_p, D and the critic's params."""
  m = models.networks(config)
  k_c, k_p, k_d, k_crit = jax.random.split(key, 4)
  x = jnp.zeros(_frame_shape(config), jnp.float32)
  v_c = m.content_encoder.init(k_c, x, train=False)
  (z_c, skips) = m.content_encoder.apply(v_c, x, train=False)
  v_p = m.pose_encoder.init(k_p, x, train=False)
  z_p = jnp.zeros((1, config.model.pose_dim), jnp.float32)
  v_d = m.decoder.init(k_d, z_c, z_p, skips if m.takes_skips else None, train=False)
  v_crit = m.critic.init(k_crit, z_p, z_p)
  params = {'content_encoder': v_c['params'], 'pose_encoder': v_p['params'],
            'decoder': v_d['params']}
  stats = {'content_encoder': v_c['batch_stats'], 'pose_encoder': v_p['batch_stats'],
           'decoder': v_d['batch_stats']}
  return params, stats, v_crit['params']


@compiler.per_config
def _autoencoder_init(config):
  """`init(key) -> (params, batch_stats, critic_params)` for `config`: one compiled
  program (op by op is many times slower on CPU), compiled for compile time."""
  return compiler.jit_once(functools.partial(init_autoencoder_variables, config))


@compiler.per_config
def _lstm_init(config):
  """`init(key) -> params` of `config`'s pose LSTM (its input is concat(pose, content))."""
  lstm = models.networks(config).lstm
  width = config.model.pose_dim + config.model.content_dim
  init = compiler.jit_once(lstm.init)
  # The example input is made at each call: built here, inside a trace (a restore's
  # `jax.eval_shape`), it would be that trace's value, kept past it.
  return lambda key: init(key, lstm.initial_carry(1),
                          jnp.zeros((1, width), jnp.float32))['params']


def create_train_state(config, key) -> AEState:
  """Fresh autoencoder-stage state for `config` (see `mipae_jax.configs`)."""
  params, stats, critic_params = _autoencoder_init(config)(key)
  return AEState(
      step=jnp.zeros((), jnp.int32),
      model=new_train_state(params, adam(config.optim)),
      critic=new_train_state(critic_params, adam(config.optim)),
      batch_stats=stats)


def create_lstm_state(config, key) -> LSTMState:
  """Fresh pose-LSTM state; its input is concat(pose, content)."""
  params = _lstm_init(config)(key)
  return LSTMState(step=jnp.zeros((), jnp.int32),
                   lstm=new_train_state(params, adam(config.lstm_optim)))


def autoencoder_variables(state: AEState) -> dict:
  """The frozen networks the LSTM stage and evaluation use: {'params', 'batch_stats'}."""
  return {'params': state.model.params, 'batch_stats': state.batch_stats}


# ------------------------------------------------------------------------ Helpers.


def _split_batch(batch):
  """`batch` is `{'video': [B, T, H, W, C]}`, optionally with `'critic_video'` (the
  critic step's own batch: the model step uses a new one, docs/method.md section 2); a bare
  array serves both steps."""
  if isinstance(batch, dict):
    video = batch['video']
    return batch.get('critic_video', video), video
  return batch, batch


def _global_negatives(x, perm_key, axis_name):
  """Rows of `x [B_local, D]` re-paired by one permutation of the GLOBAL batch.

  The pose codes are small, so every device gathers them all, applies the same
  permutation (same key everywhere) and keeps its own slice: exactly what one device
  holding the global batch would compute.
  """
  if axis_name is None:
    return x[jax.random.permutation(perm_key, x.shape[0])]
  full = lax.all_gather(x, axis_name, tiled=True)  # [B_global, D]
  n_local = x.shape[0]
  perm = jax.random.permutation(perm_key, full.shape[0])
  start = lax.axis_index(axis_name) * n_local
  return full[lax.dynamic_slice_in_dim(perm, start, n_local)]


def _pmean(tree, axis_name):
  return tree if axis_name is None else lax.pmean(tree, axis_name)


def critic_scores(critic, a, b, neg_key, kind: str = 'pairs',
                  axis_name: str | None = None) -> losses.Scores:
  """A critic's `losses.Scores` on joint pairs `(a, b)` (`[B_local, Dp]` each).

  `critic(a, b) -> [...]` scores pairs over any leading shape. 'pairs': the joint pairs
  and `a` re-paired by one permutation of the global batch (`neg_key`). 'matrix': every
  `a` against every `b` of the global batch `[B_local, B_global]`, the joint and shuffled
  pairs read off it (the next row's pose, cyclically, as the shuffled one).
  """
  if kind == 'pairs':
    return losses.Scores(critic(a, b), critic(a, _global_negatives(b, neg_key, axis_name)))
  full = b if axis_name is None else lax.all_gather(b, axis_name, tiled=True)
  n, m = a.shape[0], full.shape[0]
  matrix = critic(jnp.broadcast_to(a[:, None], (n, m, a.shape[-1])),
                  jnp.broadcast_to(full[None], (n, m, full.shape[-1])))
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * n
  cols = offset + jnp.arange(n)
  rows = jnp.arange(n)
  return losses.Scores(matrix[rows, cols], matrix[rows, (cols + 1) % m], matrix, cols)


# ------------------------------------------------------------------ Stage 1 step.


def critic_step(state: AEState, video, key, *, nets: models.Networks, loss_config,
                axis_name: str | None = None):
  """Critic ascent (docs/method.md section 2): poses of two random frames, encoder gradients
  stopped, joint pairs vs pairs re-matched by a permutation of the global batch.

  Args: video `[B, T, H, W, C]` (per device); key for this update; `nets` built for
  `axis_name` (`models.networks(config, axis_name)`); `loss_config` the run's `config.loss`.
  Returns: (state with a new critic and pose-encoder BatchNorm statistics, metrics).
  """
  k_t, k_neg = jax.random.split(key)
  t1, t2 = jax.random.randint(k_t, (2,), 0, video.shape[1])
  params, stats = state.model.params, state.batch_stats
  a, stats = nets.pose(params, stats, video[:, t1], train=True)
  b, stats = nets.pose(params, stats, video[:, t2], train=True)
  a, b = lax.stop_gradient(a), lax.stop_gradient(b)
  variant = losses.variant(loss_config.name)

  def objective(critic_params):
    s = critic_scores(functools.partial(nets.score, critic_params), a, b, k_neg,
                      variant.scores, axis_name)
    return variant.critic_loss(s, loss_config, axis_name), variant.estimate(s, axis_name)

  (loss, mi), grads = jax.value_and_grad(objective, has_aux=True)(state.critic.params)
  grads = _pmean(grads, axis_name)
  state = state.replace(critic=state.critic.apply_gradients(grads=grads), batch_stats=stats)
  return state, {'critic_loss': loss, 'critic_mi': mi,
                 'critic_grad_norm': optax.tree.norm(grads)}


def foreground_weight(loss_config, step=None):
  """The weight of a lit pixel's reconstruction error at autoencoder step `step`.

  `loss.fg_weight` until step `loss.fg_anneal_start`, then linearly down to 1 (every pixel
  alike, the paper's loss) over `loss.fg_anneal_steps` steps, and 1 after. Without
  annealing (`fg_anneal_steps` 0, or `step` None) it is the constant `fg_weight`, a
  Python float, so the program is the one traced before annealing existed.
  """
  fg = float(loss_config.fg_weight)
  ramp = int(loss_config.fg_anneal_steps)
  if ramp == 0 or step is None or fg == 1:
    return fg
  done = jnp.clip((step - int(loss_config.fg_anneal_start)) / ramp, 0.0, 1.0)
  return fg + (1.0 - fg) * done


def model_losses(params, stats, critic_params, video, k, r, neg_key, *,
                 nets: models.Networks, loss_config, axis_name: str | None = None,
                 step=None):
  """The autoencoder objective for frame offsets `k` (content/pose frame) and `r`
  (reference pose frame) on `video [B, T, H, W, C]`, with `nets` built for `axis_name`
  and `loss_config` the run's `config.loss`; `step` (the autoencoder step, a scalar)
  places an annealed foreground weight (`foreground_weight`).
  Returns (total, (new batch_stats, loss terms)).

  `E_c(x[k])` and `E_p(x[r])` are targets: their gradients are stopped.
  """
  lc = loss_config
  x0, xk, xr = video[:, 0], video[:, k], video[:, r]
  (h_c, skips), stats = nets.content(params, stats, x0, train=True)
  (h_c_k, _), stats = nets.content(params, stats, xk, train=True)
  h_p, stats = nets.pose(params, stats, xk, train=True)
  h_p_r, stats = nets.pose(params, stats, xr, train=True)
  h_c_k, h_p_r = lax.stop_gradient(h_c_k), lax.stop_gradient(h_p_r)
  recon, stats = nets.decode(params, stats, h_c, h_p, skips, train=True)
  l_sim = losses.global_mean((h_c - h_c_k) ** 2, axis_name)
  if lc.recon == 'bce':  # Binary cross-entropy on the decoder's sigmoid output.
    p = jnp.clip(recon, 1e-6, 1 - 1e-6)
    per_pixel = -(xk * jnp.log(p) + (1 - xk) * jnp.log1p(-p))
  else:
    per_pixel = jnp.abs(recon - xk) if lc.recon == 'l1' else (recon - xk) ** 2
  fg = foreground_weight(lc, step)
  if not (isinstance(fg, float) and fg == 1):
    # A small sprite is ~1.4% of its channel: its pixels' gradient, weakened by a saturated
    # sigmoid, loses to the black pixels' (RESULTS.md, two sprites). The per-channel
    # metrics below stay unweighted, comparable across runs.
    l_recon = losses.global_mean((1 + (fg - 1) * xk) * per_pixel, axis_name)
  else:
    l_recon = losses.global_mean(per_pixel, axis_name)
  variant = losses.variant(lc.name)
  s = critic_scores(functools.partial(nets.score, critic_params), h_p, h_p_r, neg_key,
                    variant.scores, axis_name)
  l_mi = variant.penalty(s, lc, axis_name)
  total = l_recon + lc.alpha * l_sim + lc.beta * l_mi
  terms = {'loss': total, 'recon_loss': l_recon, 'sim_loss': l_sim, 'mi_loss': l_mi}
  if not isinstance(fg, float):
    terms['fg_weight'] = fg  # Annealed: the curve shows where the ramp is.
  if per_pixel.shape[-1] > 1:
    # Per channel (RGB Moving dSprites and MNIST draw object i into channel i): shows an
    # object the decoder has dropped, which the mean over channels hides.
    for c in range(per_pixel.shape[-1]):
      terms[f'recon_loss_ch{c}'] = lax.stop_gradient(
          losses.global_mean(per_pixel[..., c], axis_name))
  return total, (stats, terms)


def model_step(state: AEState, video, key, *, nets: models.Networks, loss_config,
               axis_name: str | None = None):
  """Descent on E_c, E_p and D together (one optimiser), critic fixed.

  Args: video `[B, T, H, W, C]` (per device); key for this update; `nets`, `loss_config`
  as `critic_step`'s.
  Returns: (state with new model parameters and BatchNorm statistics, metrics).
  """
  k_k, k_r, k_neg = jax.random.split(key, 3)
  num_frames = video.shape[1]
  k = jax.random.randint(k_k, (), 1, num_frames)  # uniform in [1, T-1]
  r = jax.random.randint(k_r, (), 0, num_frames)
  objective = functools.partial(model_losses, stats=state.batch_stats,
                                critic_params=state.critic.params, video=video, k=k, r=r,
                                neg_key=k_neg, nets=nets, loss_config=loss_config,
                                axis_name=axis_name, step=state.step)
  (_, (stats, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.model.params)
  grads = _pmean(grads, axis_name)
  metrics['grad_norm'] = optax.tree.norm(grads)
  return state.replace(model=state.model.apply_gradients(grads=grads),
                       batch_stats=stats), metrics


def ae_train_step(state: AEState, batch, key, *, config, axis_name: str | None = None):
  """One autoencoder iteration: `critic_step`, then `model_step` (docs/method.md section 2).

  Args:
    state: `AEState`.
    batch: `{'video': [B, T, H, W, C], 'critic_video': [B, T, H, W, C] (optional)}` or a
      bare `[B, T, H, W, C]` array; floats in [0, 1]; B is the per-device batch.
    key: the run's root key; the step folds in `state.step`.
    config: the run config (static).
    axis_name: device axis of a data-parallel wrapper, None on one device.
  Returns:
    (new state, metrics: dict of scalars averaged over devices).
  """
  critic_video, video = _split_batch(batch)
  k_critic, k_model = jax.random.split(jax.random.fold_in(key, state.step))
  # Built once per traced step, for both updates.
  common = dict(nets=models.networks(config, axis_name), loss_config=config.loss,
                axis_name=axis_name)
  state, critic_metrics = critic_step(state, critic_video, k_critic, **common)
  state, metrics = model_step(state, video, k_model, **common)
  return state.replace(step=state.step + 1), {**metrics, **critic_metrics}


# ------------------------------------------------------------------ Stage 2 step.


def lstm_train_step(state: LSTMState, ae_variables, batch, key, *, config,
                    axis_name: str | None = None):
  """One LSTM iteration with teacher forcing (docs/method.md section 3).

  Args:
    state: `LSTMState` (the only thing optimised).
    ae_variables: frozen autoencoder `{'params', 'batch_stats'}` (never updated).
    batch: `{'video': [B, T, H, W, C]}` or the bare array.
    key: unused (the step is deterministic); kept so both stages share one signature.
  Returns:
    (new state, {'lstm_loss', 'grad_norm'}).
  """
  del key
  nets = models.networks(config)
  h_c, h_p = encode_for_lstm(nets, ae_variables, _split_batch(batch)[1],
                             config.data.input_frames)
  return _lstm_update(state, nets, h_c, h_p, axis_name)


def encode_for_lstm(nets: models.Networks, ae_variables, video, input_frames: int):
  """The frozen codes an LSTM iteration trains on: `video [B, T, H, W, C]` ->
  (h_c [B, Dc] of the last of the `input_frames` conditioning frames, h_p [B, T, Dp] of
  every frame)."""
  h_c, _, h_p = predict.encode_video(nets, lax.stop_gradient(ae_variables), video,
                                     input_frames - 1)
  return h_c, h_p


def lstm_encoder(config):
  """`encode_for_lstm` on the networks of `config`, built once:
  `encode(ae_variables, video [B, T, H, W, C]) -> (h_c, h_p)`, for `jax.jit`."""
  return functools.partial(encode_for_lstm, models.networks(config),
                           input_frames=config.data.input_frames)


def lstm_codes_step(state: LSTMState, batch, key, *, config, axis_name: str | None = None):
  """`lstm_train_step` on codes encoded beforehand (`config.lstm.code_pool`).

  The encoders are frozen and in inference mode, so a video's codes are a pure function
  of the video: this step on `encode_for_lstm`'s codes of a batch equals
  `lstm_train_step` on the batch itself, without its 2T encoder passes.

  Args: batch `{'h_c': [B, Dc], 'h_p': [B, T, Dp]}`; key unused.
  """
  del key
  return _lstm_update(state, models.networks(config), batch['h_c'], batch['h_p'], axis_name)


def _lstm_update(state: LSTMState, nets: models.Networks, h_c, h_p, axis_name):
  def objective(lstm_params):
    preds = predict.lstm_teacher_forced(nets, lstm_params, h_c, h_p)
    per_step = jnp.mean((preds - h_p[:, 1:]) ** 2, axis=(0, 2))  # [T-1]
    return jnp.sum(_pmean(per_step, axis_name))

  loss, grads = jax.value_and_grad(objective)(state.lstm.params)
  grads = _pmean(grads, axis_name)
  new_state = state.replace(step=state.step + 1,
                            lstm=state.lstm.apply_gradients(grads=grads))
  return new_state, {'lstm_loss': loss, 'grad_norm': optax.tree.norm(grads)}
