"""Critic objectives and mutual-information bounds on critic scores.

A critic C scores pose pairs; `t_joint [N]` are its scores on pairs drawn from the joint
distribution (two frames of one video) and `t_marg [N]` on pairs from the product of
marginals (poses of different videos). For a critic trained to optimality with the
Jensen-Shannon (GAN) objective, the score is the log density ratio
`T* = log p(a, b) / (p(a) p(b))`, which is what lets the bounds below read off MI.

Every reduction takes an optional `axis_name`: inside a data-parallel step the means
run over the global batch, so the value (and gradient) does not depend on how many
devices share the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def global_mean(x, axis_name: str | None = None):
  """Mean of all entries of `x` over the global batch (all devices on `axis_name`)."""
  m = jnp.mean(x)
  return m if axis_name is None else lax.pmean(m, axis_name)


def global_logmeanexp(x, axis_name: str | None = None):
  """log(mean(exp(x))) over the global batch, computed stably."""
  mx = lax.stop_gradient(jnp.max(x))
  if axis_name is not None:
    mx = lax.pmax(mx, axis_name)
  return jnp.log(global_mean(jnp.exp(x - mx), axis_name)) + mx


# ---------------------------------------------------------------- Critic training.


def js_critic_objective(t_joint, t_marg, axis_name=None):
  """GAN / Jensen-Shannon objective the critic MAXIMISES:
  `mean(log sigmoid(T_joint)) + mean(log(1 - sigmoid(T_marg)))`."""
  return (global_mean(-jax.nn.softplus(-t_joint), axis_name)
          + global_mean(-jax.nn.softplus(t_marg), axis_name))


def drnet_critic_loss(t_joint, t_marg, axis_name=None):
  """DRNET's scene-discriminator loss the critic MINIMISES: binary cross-entropy with
  joint pairs labelled 1 and marginal pairs 0, weight 0.5 each."""
  return 0.5 * (global_mean(jax.nn.softplus(-t_joint), axis_name)
                + global_mean(jax.nn.softplus(t_marg), axis_name))


# ------------------------------------------------------------------- MI bounds.


def nwj_with_js_critic(t_joint, t_marg, axis_name=None):
  """The MIPAE penalty: `mean(T_joint) - mean(exp(T_marg)) + 1`.

  This is the NWJ bound `E_p[f] - E_q[exp(f - 1)]` at `f = T + 1`; with the optimal JS
  critic (`T = log p/q`) it equals the MI exactly in expectation.
  """
  return (global_mean(t_joint, axis_name) - global_mean(jnp.exp(t_marg), axis_name) + 1.0)


def nwj_bound(t_joint, t_marg, axis_name=None):
  """NWJ (f-divergence) bound `E_p[T] - E_q[exp(T - 1)]`, for a critic trained on it."""
  return global_mean(t_joint, axis_name) - global_mean(jnp.exp(t_marg - 1.0), axis_name)


def dv_bound(t_joint, t_marg, axis_name=None):
  """Donsker-Varadhan bound `E_p[T] - log E_q[exp(T)]`."""
  return global_mean(t_joint, axis_name) - global_logmeanexp(t_marg, axis_name)


def smile_bound(t_joint, t_marg, clip: float = 5.0, axis_name=None):
  """SMILE as the published MIPAE code computes it: both scores clamped to
  `[-clip, clip]`, then the DV bound. Clamping the joint scores caps the estimate (at
  most `2 clip`) and zeroes the gradient of every clamped joint pair."""
  return dv_bound(jnp.clip(t_joint, -clip, clip), jnp.clip(t_marg, -clip, clip), axis_name)


def smile_song_ermon_bound(t_joint, t_marg, clip: float = 5.0, axis_name=None):
  """SMILE as Song & Ermon (2020) define it: the DV bound with only the marginal scores
  (the partition-function term, whose variance SMILE bounds) clipped to `[-clip, clip]`;
  the joint mean is left exact, so large MI is not capped."""
  return dv_bound(t_joint, jnp.clip(t_marg, -clip, clip), axis_name)


def infonce_bound(scores):
  """InfoNCE `mean_i [s_ii - log mean_j exp(s_ij)]` on a score matrix `[N, N]` whose
  diagonal holds the joint pairs. Bounded above by log N."""
  n = scores.shape[0]
  return jnp.mean(jnp.diag(scores) - jax.nn.logsumexp(scores, axis=1)) + jnp.log(n)


def drnet_confusion_loss(t_joint, axis_name=None):
  """DRNET's pose-encoder term: BCE of sigmoid(T_joint) against 0.5 (confuse the critic)."""
  return 0.5 * global_mean(jax.nn.softplus(-t_joint) + jax.nn.softplus(t_joint), axis_name)


# 'smile' is the published MIPAE code's SMILE; 'smile_song_ermon' the estimator as its
# authors define it (both train the critic with the JS objective).
LOSS_NAMES = ('mipae', 'drnet', 'smile', 'smile_song_ermon')


def critic_loss(name: str, t_joint, t_marg, axis_name=None, smile_clip: float = 5.0):
  """The loss the critic minimises, for loss variant `name`."""
  if name == 'smile':  # The published code trains the critic on the clamped scores.
    return -js_critic_objective(jnp.clip(t_joint, -smile_clip, smile_clip),
                                jnp.clip(t_marg, -smile_clip, smile_clip), axis_name)
  if name in ('mipae', 'smile_song_ermon'):
    return -js_critic_objective(t_joint, t_marg, axis_name)
  if name == 'drnet':
    return drnet_critic_loss(t_joint, t_marg, axis_name)
  raise ValueError(f'config.loss.name must be one of {LOSS_NAMES}; got {name!r}.')


def model_penalty(name: str, t_joint, t_marg, smile_clip: float = 5.0, axis_name=None):
  """The term the autoencoder minimises (weighted by beta), for loss variant `name`."""
  if name == 'mipae':
    return nwj_with_js_critic(t_joint, t_marg, axis_name)
  if name == 'smile':
    return smile_bound(t_joint, t_marg, smile_clip, axis_name)
  if name == 'smile_song_ermon':
    return smile_song_ermon_bound(t_joint, t_marg, smile_clip, axis_name)
  if name == 'drnet':
    return drnet_confusion_loss(t_joint, axis_name)
  raise ValueError(f'config.loss.name must be one of {LOSS_NAMES}; got {name!r}.')
