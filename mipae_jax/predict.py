"""Inference with trained networks: pose rollout, frame prediction, reconstructions and
analogies. Every function is pure and jit-compatible (`config` static); BatchNorm runs
in inference mode."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from mipae_jax import compiler
from mipae_jax.models import build_models, uses_skips
from mipae_jax.train import encode_video


def _decode(config, ae_variables, h_c, skips, poses):
  """Frames for each pose of a sequence: `h_c [B, Dc]`, `poses [B, S, Dp]` ->
  `[B, S, H, W, C]`, every frame decoded with the same content (and skips)."""
  dec = build_models(config.model, config.data)['decoder']
  b, s = poses.shape[:2]
  rep = lambda x: jnp.repeat(x, s, axis=0)  # [B, ...] -> [B * S, ...], video-major.
  frames = dec.apply(
      {'params': ae_variables['params']['decoder'],
       'batch_stats': ae_variables['batch_stats']['decoder']},
      rep(h_c), poses.reshape(b * s, -1),
      [rep(x) for x in skips] if uses_skips(config.model) else None, train=False)
  return frames.reshape((b, s) + frames.shape[1:])


def rollout_poses(config, lstm_params, h_c, h_p_context, num_future: int):
  """Pose rollout (docs/method.md section 3, paper eq. 7).

  The LSTM reads the inferred poses of the conditioning frames, then its own
  predictions. Step t (1-based) consumes the pose of frame t-1.

  Args:
    h_c: content `[B, Dc]` of the last conditioning frame.
    h_p_context: inferred poses `[B, C, Dp]` of the C conditioning frames.
    num_future: frames to predict after the conditioning ones (>= 1).
  Returns:
    `[B, C - 1 + num_future, Dp]`: predicted poses of frames 1 .. C + num_future - 1
    (the first C - 1 are teacher-forced one-step predictions of known frames).
  """
  lstm = build_models(config.model, config.data)['lstm']
  apply = lambda carry, pose: lstm.apply({'params': lstm_params}, carry,
                                         jnp.concatenate([pose, h_c], axis=-1))
  carry, known = lax.scan(apply, lstm.initial_carry(h_c.shape[0]),
                          jnp.swapaxes(h_p_context, 0, 1))
  preds = [jnp.swapaxes(known, 0, 1)]  # frames 1 .. C

  if num_future > 1:
    def free_run(state, _):
      carry, pose = state
      carry, pose = apply(carry, pose)
      return (carry, pose), pose

    _, future = lax.scan(free_run, (carry, known[-1]), None, length=num_future - 1)
    preds.append(jnp.swapaxes(future, 0, 1))  # frames C + 1 .. C + num_future - 1
  return jnp.concatenate(preds, axis=1)


def predict_video(config, ae_variables, lstm_params, context, num_future: int):
  """Predicts `num_future` frames after `context [B, Tc, H, W, C]` (Tc conditioning frames).

  Returns `{'frames': [B, F, H, W, C], 'poses': [B, F, Dp]}` for the future frames.
  """
  num_context = context.shape[1]
  h_c, skips, h_p = encode_video(config, ae_variables, context, num_context - 1)
  poses = rollout_poses(config, lstm_params, h_c, h_p, num_future)[:, num_context - 1:]
  return {'frames': _decode(config, ae_variables, h_c, skips, poses), 'poses': poses}


def reconstruct(config, ae_variables, video, content_frame: int = 0):
  """`D(E_c(x[content_frame]), E_p(x[t]))` for every t: `[B, T, H, W, C]`."""
  h_c, skips, h_p = encode_video(config, ae_variables, video, content_frame)
  return _decode(config, ae_variables, h_c, skips, h_p)


def analogies(config, ae_variables, content_frames, pose_video):
  """Content of each frame in `content_frames [R, H, W, C]` rendered with every pose of
  `pose_video [S, H, W, C]`: `[R, S, H, W, C]`. Good disentanglement keeps each row's
  objects (shape, colour, digit) and each column's positions."""
  h_c, skips, _ = encode_video(config, ae_variables, content_frames[:, None], 0)
  _, _, h_p = encode_video(config, ae_variables, pose_video[None], 0)
  poses = jnp.broadcast_to(h_p, (content_frames.shape[0],) + h_p.shape[1:])
  return _decode(config, ae_variables, h_c, skips, poses)


def encode_frames(config, ae_variables, frames):
  """Latents of single frames `[N, H, W, C]` -> (z_c [N, Dc], z_p [N, Dp])."""
  h_c, _, h_p = encode_video(config, ae_variables, frames[:, None], 0)
  return h_c, h_p[:, 0]


def make_predictor(config, num_future: int):
  """`predict(ae_variables, lstm_params, context) -> {'frames', 'poses'}`, jitted once."""
  return compiler.jit(lambda ae, lstm, ctx: predict_video(config, ae, lstm, ctx, num_future))
