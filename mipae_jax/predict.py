"""Inference with trained networks: frozen encoding, the pose LSTM's teacher-forced pass
and rollout (one scan), frame prediction, reconstructions and analogies. Every function
is pure and jit-compatible; it takes the `models.Networks` of the run (built once by the
caller, closed over by its jitted function) and their variables, never the config.
BatchNorm runs in inference mode.

Training imports from here (the LSTM stage encodes videos and runs the LSTM the same
way), never the other way round.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mipae_jax import compiler, models


def encode_video(nets: models.Networks, ae_variables, video, content_frame: int):
  """Frozen encodings of a video batch (BatchNorm in inference mode).

  Args:
    nets: the run's networks.
    ae_variables: the autoencoder's `{'params', 'batch_stats'}`.
    video: `[B, T, H, W, C]`.
    content_frame: the frame whose content conditions the LSTM.
  Returns:
    (h_c [B, Dc], skips of that frame, h_p [B, T, Dp]).
  """
  p, s = ae_variables['params'], ae_variables['batch_stats']
  h_c, skips = nets.content(p, s, video[:, content_frame])
  pose = lambda x: nets.pose(p, s, x)
  if jax.default_backend() == 'cpu':
    # One frame index at a time (`lax.map`, a loop in the program): activations of B
    # frames instead of B*T (0.4 GB at B=100) are smaller buffers to allocate and stay
    # closer to cache; on CPU it was faster than one batch of B*T in one A/B and within
    # noise of it in later ones (BENCHMARKS.md, "What made it faster"). Accelerators want
    # the one large batch. BatchNorm is in inference mode: the numbers are the same.
    h_p = jnp.swapaxes(lax.map(pose, jnp.swapaxes(video, 0, 1)), 0, 1)
  else:
    b, t = video.shape[:2]
    h_p = pose(video.reshape((b * t,) + video.shape[2:])).reshape(b, t, -1)
  return h_c, skips, h_p


def lstm_poses(nets: models.Networks, lstm_params, h_c, h_p_given, num_free: int = 0):
  """The pose LSTM over a sequence: one step per given pose, then `num_free` steps that
  each read the previous prediction (the teacher-forced pass and the rollout are this
  one function).

  Args:
    h_c: content `[B, Dc]`, concatenated to every step's input.
    h_p_given: poses `[B, G, Dp]` fed at steps 1..G.
    num_free: further steps fed the LSTM's own output.
  Returns:
    `[B, G + num_free, Dp]`: the prediction of each step (step t predicts frame t).
  """
  apply = lambda carry, pose: nets.lstm_step(lstm_params, carry,
                                             jnp.concatenate([pose, h_c], axis=-1))
  carry, given = lax.scan(apply, nets.lstm.initial_carry(h_c.shape[0]),
                          jnp.swapaxes(h_p_given, 0, 1))
  preds = [jnp.swapaxes(given, 0, 1)]
  if num_free:
    def free_run(state, _):
      carry, pose = state
      carry, pose = apply(carry, pose)
      return (carry, pose), pose

    _, free = lax.scan(free_run, (carry, given[-1]), None, length=num_free)
    preds.append(jnp.swapaxes(free, 0, 1))
  return jnp.concatenate(preds, axis=1)


def lstm_teacher_forced(nets: models.Networks, lstm_params, h_c, h_p):
  """Teacher-forced pose predictions: `pred[:, t-1] = L(concat(h_p[:, t-1], h_c))`.

  Args: h_c `[B, Dc]`, h_p `[B, T, Dp]`. Returns `[B, T-1, Dp]` (predictions of 1..T-1).
  """
  return lstm_poses(nets, lstm_params, h_c, h_p[:, :-1])


def _decode(nets: models.Networks, ae_variables, h_c, skips, poses):
  """Frames for each pose of a sequence: `h_c [B, Dc]`, `poses [B, S, Dp]` ->
  `[B, S, H, W, C]`, every frame decoded with the same content (and skips)."""
  b, s = poses.shape[:2]
  rep = lambda x: jnp.repeat(x, s, axis=0)  # [B, ...] -> [B * S, ...], video-major.
  frames = nets.decode(ae_variables['params'], ae_variables['batch_stats'], rep(h_c),
                       poses.reshape(b * s, -1),
                       [rep(x) for x in skips] if nets.takes_skips else None)
  return frames.reshape((b, s) + frames.shape[1:])


def rollout_poses(nets: models.Networks, lstm_params, h_c, h_p_context, num_future: int):
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
  return lstm_poses(nets, lstm_params, h_c, h_p_context, num_future - 1)


def predict_video(nets: models.Networks, ae_variables, lstm_params, context, num_future: int):
  """Predicts `num_future` frames after `context [B, Tc, H, W, C]` (Tc conditioning frames).

  Returns `{'frames': [B, F, H, W, C], 'poses': [B, F, Dp]}` for the future frames.
  """
  num_context = context.shape[1]
  h_c, skips, h_p = encode_video(nets, ae_variables, context, num_context - 1)
  poses = rollout_poses(nets, lstm_params, h_c, h_p, num_future)[:, num_context - 1:]
  return {'frames': _decode(nets, ae_variables, h_c, skips, poses), 'poses': poses}


def reconstruct(nets: models.Networks, ae_variables, video, content_frame: int = 0):
  """`D(E_c(x[content_frame]), E_p(x[t]))` for every t: `[B, T, H, W, C]`."""
  h_c, skips, h_p = encode_video(nets, ae_variables, video, content_frame)
  return _decode(nets, ae_variables, h_c, skips, h_p)


def analogies(nets: models.Networks, ae_variables, content_frames, pose_video):
  """Content of each frame in `content_frames [R, H, W, C]` rendered with every pose of
  `pose_video [S, H, W, C]`: `[R, S, H, W, C]`. Good disentanglement keeps each row's
  objects (shape, colour, digit) and each column's positions."""
  h_c, skips, _ = encode_video(nets, ae_variables, content_frames[:, None], 0)
  _, _, h_p = encode_video(nets, ae_variables, pose_video[None], 0)
  poses = jnp.broadcast_to(h_p, (content_frames.shape[0],) + h_p.shape[1:])
  return _decode(nets, ae_variables, h_c, skips, poses)


def encode_frames(nets: models.Networks, ae_variables, frames):
  """Latents of single frames `[N, H, W, C]` -> (z_c [N, Dc], z_p [N, Dp])."""
  h_c, _, h_p = encode_video(nets, ae_variables, frames[:, None], 0)
  return h_c, h_p[:, 0]


def make_predictor(nets: models.Networks, num_future: int):
  """`predict(ae_variables, lstm_params, context) -> {'frames', 'poses'}`, jitted once."""
  return compiler.jit(lambda ae, lstm, ctx: predict_video(nets, ae, lstm, ctx, num_future))
