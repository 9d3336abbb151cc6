"""A trained run, read back: its checkpoints restored for readers, and `load_run(workdir)`.

`restore_autoencoder` and `restore_lstm` restore a workdir's newest checkpoints (the
evaluation, `load_run` and the LSTM stage use them); an LSTM checkpoint records the
autoencoder it was trained on (`autoencoder_record`), and one trained on another than
the workdir's is stale (`stale_reason`). This module imports neither the training loop
(`pipeline`) nor the evaluation.

  import mipae_jax
  run = mipae_jax.load_run('runs/demo')              # config + networks + variables
  z_c, z_p = run.encode(frames)                      # frames [N, H, W, C] in [0, 1]
  future = run.predict(context, num_future=5)        # context [B, Tc, H, W, C]

Every method is a jitted function of arrays (compiled once per input shape); the
variables are passed to it as arguments, not baked into the program. BatchNorm runs in
inference mode. Restoring for reading writes nothing to the workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any

import jax
import ml_collections
import numpy as np

from mipae_jax import checkpoint, compiler, config_record, errors, exported, models, predict, train

log = logging.getLogger(__name__)


# ------------------------------------------------------- Restoring a run to read it.


def autoencoder_record(ae_state) -> dict:
  """What an LSTM checkpoint records of the autoencoder it was trained on: its step and
  the digest of its frozen variables (parameters and BatchNorm statistics)."""
  return {'ae_step': int(np.asarray(jax.device_get(ae_state.step))),
          'ae_digest': checkpoint.state_digest(train.autoencoder_variables(ae_state))}


def stale_reason(meta: dict, record: dict) -> str | None:
  """Why a checkpoint trained on `meta['trained_on']` does not fit `record`, or None."""
  old = meta.get('trained_on')
  if old is None or old == record:
    return None
  return (f'its checkpoint was trained on the autoencoder at step {old.get("ae_step")} '
          f'(digest {str(old.get("ae_digest"))[:12]}), and the autoencoder is now at step '
          f'{record["ae_step"]} (digest {record["ae_digest"][:12]})')


def restore_autoencoder(config, workdir: str, step: int | None = None) -> train.AEState:
  """The autoencoder checkpoint of `workdir` at `step` (None: the newest). NotARunError if
  there is none, or (naming the kept steps) none at `step`."""
  store = checkpoint.CheckpointStore(workdir, 'ae', enabled=False)
  try:
    if step is not None:
      kept = store.all_steps()
      if step not in kept:
        raise errors.NotARunError(
            f'{workdir} keeps no autoencoder checkpoint at step {step} (kept: '
            f'{", ".join(map(str, kept)) or "none"}).')
    elif store.latest_step() is None:
      raise errors.NotARunError(
          f'No autoencoder checkpoint in {store.directory}: the LSTM stage and evaluation '
          f'need a trained autoencoder. Run `mipae-train --config=... '
          f'--workdir={workdir}` (config.train.ae_steps > 0) first.')
    abstract = jax.eval_shape(functools.partial(train.create_train_state, config),
                              jax.random.key(0))
    return store.restore(abstract, step)[0]
  finally:
    store.close()


def newest_lstm(config, workdir: str):
  """`(state, checkpoint metadata, step)` of the newest LSTM checkpoint of `workdir`, or
  None if the stage has not run. Whether it fits an autoencoder is the caller's check
  (`stale_reason` of the metadata)."""
  store = checkpoint.CheckpointStore(workdir, 'lstm', enabled=False)
  try:
    if store.latest_step() is None:
      return None
    abstract = jax.eval_shape(functools.partial(train.create_lstm_state, config),
                              jax.random.key(0))
    return store.restore(abstract)
  finally:
    store.close()


def restore_lstm(config, workdir: str, ae_state=None, allow_stale: bool = False):
  """The newest LSTM state of `workdir`, or None if the stage has not run.

  With `ae_state`, refuses (WorkdirError) an LSTM trained on another autoencoder than
  `ae_state` (the autoencoder trained on after the LSTM stage ran), unless `allow_stale`.
  """
  newest = newest_lstm(config, workdir)
  if newest is None:
    return None
  state, meta, step = newest
  if ae_state is not None:
    reason = stale_reason(meta, autoencoder_record(ae_state))
    if reason is not None and not allow_stale:
      raise errors.WorkdirError(
          f'the LSTM of {workdir} (step {step}) is stale: {reason}. Rerun the run\'s '
          'mipae-train command to retrain it on this autoencoder, or evaluate the '
          'pair anyway with --allow_stale_lstm.')
    if reason is not None:
      log.warning('Evaluating a stale LSTM (allowed): %s.', reason)
  return state


# ------------------------------------------------------------------ The loaded run.


@functools.cache
def _jitted(config_json: str):
  """The inference functions of one config (`config_json`: its record, a hashable key),
  shared by every Run of that config so each compiles once per input shape."""
  nets = models.networks(ml_collections.ConfigDict(json.loads(config_json)))
  return {
      'encode': compiler.jit(lambda v, x: predict.encode_frames(nets, v, x)),
      'reconstruct': compiler.jit(
          lambda v, x, t: predict.reconstruct(nets, v, x, t), static_argnums=2),
      'analogy': compiler.jit(lambda v, c, p: predict.analogies(nets, v, c, p)),
      'predict': compiler.jit(
          lambda v, lstm, x, n: predict.predict_video(nets, v, lstm, x, n)['frames'],
          static_argnums=3),
  }


@dataclasses.dataclass(frozen=True)
class Run:
  """A run's config, networks and trained variables, with inference on arrays.

  Attributes:
    workdir: where it was loaded from.
    config: the run's recorded config.
    networks: its `models.Networks` (E_c, E_p, D, critic, LSTM modules).
    variables: `{'autoencoder': {'params', 'batch_stats'}, 'critic': params (None for
      an exported model: inference does not use it), 'lstm': params or None}`.
    ae_step: the autoencoder checkpoint's step.
    lstm_step: the LSTM checkpoint's step (None: the run has no trained LSTM).
  """

  workdir: str
  config: ml_collections.ConfigDict
  networks: models.Networks
  variables: dict[str, Any]
  ae_step: int
  lstm_step: int | None

  @property
  def frame_shape(self) -> tuple[int, int, int]:
    """`(H, W, C)` of the frames the networks take."""
    d = self.config.data
    return (d.image_size, d.image_size, d.channels)

  def _check(self, name: str, x, rank: int, what: str):
    """`x` as float frames in [0, 1] (uint8 frames are scaled), its shape checked."""
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    if x.ndim != rank or tuple(x.shape[-3:]) != self.frame_shape:
      raise errors.DataError(
          f'{name}: expected {what} of {self.frame_shape} frames (H, W, C, values in '
          f'[0, 1] or uint8), got an array of shape {tuple(x.shape)}.')
    if x.dtype == np.uint8:
      return x.astype(np.float32) / 255.0
    return x

  @functools.cached_property
  def _fns(self):
    # Read once per Run: the config's record is the key of its shared jitted functions.
    return _jitted(json.dumps(self.config.to_dict(), default=str, sort_keys=True))

  def encode(self, frames) -> tuple[jax.Array, jax.Array]:
    """`frames [N, H, W, C]` -> `(z_c [N, content_dim], z_p [N, pose_dim])`."""
    frames = self._check('encode', frames, 4, '[N, H, W, C]')
    return self._fns['encode'](self.variables['autoencoder'], frames)

  def reconstruct(self, video, content_frame: int = 0) -> jax.Array:
    """`video [B, T, H, W, C]` -> `D(E_c(x[content_frame]), E_p(x[t]))`, `[B, T, H, W, C]`."""
    video = self._check('reconstruct', video, 5, '[B, T, H, W, C]')
    return self._fns['reconstruct'](self.variables['autoencoder'], video, content_frame)

  def analogy(self, content_frames, pose_video) -> jax.Array:
    """Each frame's content in `content_frames [R, H, W, C]` drawn at every pose of
    `pose_video [S, H, W, C]`: `[R, S, H, W, C]`."""
    content_frames = self._check('analogy', content_frames, 4, 'content frames [R, H, W, C]')
    pose_video = self._check('analogy', pose_video, 4, 'a pose video [S, H, W, C]')
    return self._fns['analogy'](self.variables['autoencoder'], content_frames, pose_video)

  def predict(self, context_frames, num_future: int) -> jax.Array:
    """`num_future` frames after `context_frames [B, Tc, H, W, C]`: `[B, F, H, W, C]`
    (the content of the last context frame, the poses the LSTM rolls out)."""
    if self.variables['lstm'] is None:
      raise errors.NotARunError(
          f'{self.workdir} has no trained pose LSTM: predict needs one. Run mipae-train '
          'with the run\'s config and train.lstm_steps > 0 to train it.')
    if not isinstance(num_future, int) or num_future < 1:
      raise errors.ConfigError(f'predict: num_future={num_future!r}, expected an int >= 1.')
    context_frames = self._check('predict', context_frames, 5, 'context [B, Tc, H, W, C]')
    return self._fns['predict'](self.variables['autoencoder'], self.variables['lstm'],
                                context_frames, num_future)


def load_run(workdir: str, allow_stale_lstm: bool = False) -> Run:
  """The newest checkpoints of a run directory made by `mipae-train` (or `mipae-convert`),
  or an exported model's directory (`mipae-export`; `mipae_jax.exported`).

  Args:
    workdir: the run directory, or an exported model's.
    allow_stale_lstm: load an LSTM trained on an older autoencoder than the workdir's
      newest (refused otherwise, as mipae-evaluate refuses it).
  Returns:
    A `Run`; its `variables['lstm']` is None if the LSTM stage has not run.
  Raises:
    NotARunError: `workdir` has no config record or no autoencoder checkpoint.
    WorkdirError: its LSTM is stale (see `allow_stale_lstm`).
    DataError: an exported model's variables do not fit its config.
  """
  if exported.is_exported(workdir):
    config, variables, record = exported.read(workdir)
    return Run(workdir=workdir, config=config, networks=models.networks(config),
               variables=variables, ae_step=int(record['ae_step']),
               lstm_step=record.get('lstm_step'))
  config = config_record.load_config(workdir)
  ae_state = restore_autoencoder(config, workdir)
  lstm_state = restore_lstm(config, workdir, ae_state, allow_stale=allow_stale_lstm)
  variables = {'autoencoder': train.autoencoder_variables(ae_state),
               'critic': ae_state.critic.params,
               'lstm': None if lstm_state is None else lstm_state.lstm.params}
  return Run(workdir=workdir, config=config, networks=models.networks(config),
             variables=variables, ae_step=int(ae_state.step),
             lstm_step=None if lstm_state is None else int(lstm_state.step))
