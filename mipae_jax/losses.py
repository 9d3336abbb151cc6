"""Critic objectives and mutual-information bounds on critic scores.

A critic C scores pose pairs; `t_joint [N]` are its scores on pairs drawn from the joint
distribution (two frames of one video) and `t_marg [N]` on pairs from the product of
marginals (poses of different videos). For a critic trained to optimality with the
Jensen-Shannon (GAN) objective, the score is the log density ratio
`T* = log p(a, b) / (p(a) p(b))`, which is what lets the bounds below read off MI.

Each loss variant (`config.loss.name`) is one `Variant` in `VARIANTS`: a new bound is a
function plus one `register` line.

Every reduction takes an optional `axis_name`: inside a data-parallel step the means
run over the global batch, so the value (and gradient) does not depend on how many
devices share the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mipae_jax import registry


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


def infonce_bound(scores, joint_cols=None, axis_name=None):
  """InfoNCE `mean_i [s_i,c(i) - log mean_j exp(s_ij)]` on a score matrix `[N, M]` whose
  row i holds its joint pair at column `joint_cols[i]` (default: the diagonal of a square
  matrix). Bounded above by log M."""
  n, m = scores.shape
  if joint_cols is None:
    joint_cols = jnp.arange(n)
  joint = jnp.take_along_axis(scores, joint_cols[:, None], axis=1)[:, 0]
  return global_mean(joint - jax.nn.logsumexp(scores, axis=1), axis_name) + jnp.log(m)


def drnet_confusion_loss(t_joint, axis_name=None):
  """DRNET's pose-encoder term: BCE of sigmoid(T_joint) against 0.5 (confuse the critic)."""
  return 0.5 * global_mean(jax.nn.softplus(-t_joint) + jax.nn.softplus(t_joint), axis_name)


# --------------------------------------------------------------- The registry.


class Scores(NamedTuple):
  """A critic's scores on one batch of N pose pairs (per device).

  joint `[N]`: the pairs from one video; marg `[N]`: the same first poses re-paired
  across the global batch. Variants with `scores='matrix'` also get matrix `[N, M]`:
  every local first pose against every second pose of the global batch (M rows in all),
  row i's joint pair at column `joint_cols[i]`.
  """
  joint: jax.Array
  marg: jax.Array
  matrix: jax.Array | None = None
  joint_cols: jax.Array | None = None


def _js_estimate(s: Scores, axis_name=None):
  return nwj_with_js_critic(s.joint, s.marg, axis_name)


def _no_fields(loss_config) -> str | None:
  del loss_config
  return None


@dataclasses.dataclass(frozen=True)
class Variant:
  """One MI term, selected by `config.loss.name`: how the critic trains and what the
  autoencoder minimises (weighted by `config.loss.beta`).

  critic_loss, penalty: `(scores: Scores, loss_config, axis_name) -> scalar`; they read
    their own parameters from `loss_config` (`config.loss`), e.g. `smile_clip`.
  estimate: `(scores, axis_name) -> scalar`, the critic's MI estimate, logged as
    `critic_mi` (default: the MIPAE penalty, exact for a JS-optimal critic).
  scores: 'pairs' (joint and shuffled pairs only) or 'matrix' (also the [N, M] matrix).
  check: `loss_config -> None | str`, what is wrong with the variant's own parameters.
  """
  critic_loss: Callable
  penalty: Callable
  estimate: Callable = _js_estimate
  scores: str = 'pairs'
  check: Callable = _no_fields
  doc: str = ''


VARIANTS: registry.Registry[Variant] = registry.Registry('config.loss.name')


def register(name: str, variant: Variant) -> Variant:
  """Makes `variant` selectable as `config.loss.name = name` (and in studies' --methods);
  refuses a name already registered."""
  if variant.scores not in ('pairs', 'matrix'):
    raise ValueError(f"Variant.scores must be 'pairs' or 'matrix'; got {variant.scores!r}.")
  return VARIANTS.register(name, variant)


def names() -> tuple[str, ...]:
  return tuple(VARIANTS)


def variant(name: str) -> Variant:
  return VARIANTS.lookup(name)


def _clip_check(lc):
  if isinstance(lc.smile_clip, bool) or not lc.smile_clip > 0:
    return f'config.loss.smile_clip={lc.smile_clip!r} is not allowed: expected a number > 0.'
  return None


def _clamped(s: Scores, lc) -> Scores:
  c = lc.smile_clip
  return s._replace(joint=jnp.clip(s.joint, -c, c), marg=jnp.clip(s.marg, -c, c))


register('mipae', Variant(
    critic_loss=lambda s, lc, ax: -js_critic_objective(s.joint, s.marg, ax),
    penalty=lambda s, lc, ax: nwj_with_js_critic(s.joint, s.marg, ax),
    doc='JS-trained critic, NWJ penalty at f = T + 1 (the paper).'))
register('drnet', Variant(
    critic_loss=lambda s, lc, ax: drnet_critic_loss(s.joint, s.marg, ax),
    penalty=lambda s, lc, ax: drnet_confusion_loss(s.joint, ax),
    doc='BCE scene discriminator, confusion term (the DRNET baseline).'))
# 'smile' is the published MIPAE code's SMILE (the critic also trains on clamped scores);
# 'smile_song_ermon' the estimator as its authors define it.
register('smile', Variant(
    critic_loss=lambda s, lc, ax: -js_critic_objective(*_clamped(s, lc)[:2], ax),
    penalty=lambda s, lc, ax: smile_bound(s.joint, s.marg, lc.smile_clip, ax),
    check=_clip_check, doc='DV on scores clamped to [-smile_clip, smile_clip] (published).'))
register('smile_song_ermon', Variant(
    critic_loss=lambda s, lc, ax: -js_critic_objective(s.joint, s.marg, ax),
    penalty=lambda s, lc, ax: smile_song_ermon_bound(s.joint, s.marg, lc.smile_clip, ax),
    check=_clip_check, doc='DV with only the marginal scores clipped (Song & Ermon).'))
# Bounds whose critic is trained on the bound itself (MINE-style).
register('nwj', Variant(
    critic_loss=lambda s, lc, ax: -nwj_bound(s.joint, s.marg, ax),
    penalty=lambda s, lc, ax: nwj_bound(s.joint, s.marg, ax),
    estimate=lambda s, ax: nwj_bound(s.joint, s.marg, ax),
    doc='NWJ bound, critic trained on it (its optimum is log ratio + 1).'))
register('dv', Variant(
    critic_loss=lambda s, lc, ax: -dv_bound(s.joint, s.marg, ax),
    penalty=lambda s, lc, ax: dv_bound(s.joint, s.marg, ax),
    estimate=lambda s, ax: dv_bound(s.joint, s.marg, ax),
    doc='Donsker-Varadhan bound, critic trained on it (MINE without the moving average).'))
register('infonce', Variant(
    critic_loss=lambda s, lc, ax: -infonce_bound(s.matrix, s.joint_cols, ax),
    penalty=lambda s, lc, ax: infonce_bound(s.matrix, s.joint_cols, ax),
    estimate=lambda s, ax: infonce_bound(s.matrix, s.joint_cols, ax),
    scores='matrix',
    doc='InfoNCE over every pair of the global batch (at most log of the global batch).'))
