"""Rollout shapes, teacher-forcing equivalence on the conditioning frames, free running."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mipae_jax import models, predict, train
from mipae_jax.configs import tiny
from mipae_jax.models import build_models


@pytest.fixture(scope='module')
def setup():
  config = tiny.get_config()
  config.model.skips = True
  ae = train.autoencoder_variables(train.create_train_state(config, jax.random.key(0)))
  lstm_params = train.create_lstm_state(config, jax.random.key(1)).lstm.params
  d = config.data
  video = jax.random.uniform(jax.random.key(2), (3, 6, d.image_size, d.image_size, d.channels))
  return config, models.networks(config), ae, lstm_params, video


def test_rollout_matches_teacher_forcing_on_known_frames(setup):
  config, nets, ae, lstm_params, video = setup
  c = 3
  h_c, _, h_p = predict.encode_video(nets, ae, video, c - 1)
  rolled = predict.rollout_poses(nets, lstm_params, h_c, h_p[:, :c], num_future=4)
  assert rolled.shape == (3, c - 1 + 4, config.model.pose_dim)
  forced = predict.lstm_teacher_forced(nets, lstm_params, h_c, h_p)
  # Frames 1..C are predicted from inferred poses in both.
  np.testing.assert_allclose(rolled[:, :c], forced[:, :c], atol=1e-6)
  # After that, each step reads the previous prediction.
  lstm = build_models(config.model, config.data)['lstm']
  carry = lstm.initial_carry(3)
  pose = None
  for t in range(c - 1 + 4):
    inp = h_p[:, t] if t < c else pose
    carry, pose = lstm.apply({'params': lstm_params}, carry, jnp.concatenate([inp, h_c], -1))
    np.testing.assert_allclose(rolled[:, t], pose, atol=1e-5)


def test_pose_encoding_is_the_same_on_every_backend_path(setup, monkeypatch):
  """CPU encodes one frame index at a time (`lax.map`), accelerators one batch of B*T;
  CI has only CPUs, so the accelerator path is forced here and compared."""
  _, nets, ae, _, video = setup
  # A new function object each time: jit and make_jaxpr cache traces per function.
  fn = lambda: lambda v: predict.encode_video(nets, ae, v, 1)
  cpu = jax.jit(fn())(video)
  assert 'scan' in str(jax.make_jaxpr(fn())(video))  # The per-frame loop.
  monkeypatch.setattr(predict.jax, 'default_backend', lambda: 'gpu')
  assert 'scan' not in str(jax.make_jaxpr(fn())(video))  # One batch of B*T frames.
  other = jax.jit(fn())(video)
  for a, b in zip(jax.tree.leaves(cpu), jax.tree.leaves(other), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_predict_video_shapes(setup):
  config, nets, ae, lstm_params, video = setup
  out = predict.make_predictor(nets, 5)(ae, lstm_params, video[:, :2])
  d = config.data
  assert out['frames'].shape == (3, 5, d.image_size, d.image_size, d.channels)
  assert out['poses'].shape == (3, 5, config.model.pose_dim)
  assert np.all((np.asarray(out['frames']) >= 0) & (np.asarray(out['frames']) <= 1))


def test_reconstruct_and_analogies_shapes(setup):
  config, nets, ae, _, video = setup
  rec = jax.jit(lambda v: predict.reconstruct(nets, ae, v))(video)
  assert rec.shape == video.shape
  grid = jax.jit(lambda a, b: predict.analogies(nets, ae, a, b))(video[:, 0], video[0])
  assert grid.shape == (3, 6) + video.shape[2:]
  # Row r uses row r's content: same pose column, different content rows differ.
  z_c, z_p = predict.encode_frames(nets, ae, video[:, 0])
  assert z_c.shape == (3, config.model.content_dim) and z_p.shape == (3, config.model.pose_dim)
