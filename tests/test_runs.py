"""`mipae_jax.load_run`: a trained run directory loaded for use, quietly."""

import logging

import jax
import numpy as np
import pytest

import mipae_jax
from mipae_jax import errors, predict
from mipae_jax.configs import tiny


@pytest.fixture(scope='module')
def run_dir(tiny_run):
  """A tiny run: 2 autoencoder and 2 LSTM steps (no evaluation; read only)."""
  return tiny_run


def test_version_is_exposed():
  assert mipae_jax.__version__.count('.') == 2


def test_load_run_restores_without_orbax_warnings(run_dir, caplog):
  with caplog.at_level(logging.WARNING):
    run = mipae_jax.load_run(run_dir)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
  assert (run.ae_step, run.lstm_step) == (2, 2)
  assert run.frame_shape == (32, 32, 3)
  assert run.config.model.nf == tiny.get_config().model.nf


def test_inference_functions_match_predict(run_dir):
  run = mipae_jax.load_run(run_dir)
  rng = np.random.default_rng(0)
  video = rng.random((2, 4, 32, 32, 3), dtype=np.float32)
  ae = run.variables['autoencoder']
  z_c, z_p = run.encode(video[:, 0])
  ref_c, ref_p = predict.encode_frames(run.networks, ae, video[:, 0])
  np.testing.assert_allclose(z_c, ref_c, atol=1e-6)
  np.testing.assert_allclose(z_p, ref_p, atol=1e-6)
  assert z_c.shape == (2, 16) and z_p.shape == (2, 3)
  assert run.reconstruct(video).shape == (2, 4, 32, 32, 3)
  assert run.analogy(video[:, 0], video[0]).shape == (2, 4, 32, 32, 3)
  future = run.predict(video[:, :2], num_future=3)
  ref = predict.predict_video(run.networks, ae, run.variables['lstm'], video[:, :2], 3)
  np.testing.assert_allclose(future, ref['frames'], atol=1e-6)
  # uint8 frames are read as [0, 255] -> [0, 1].
  as_uint8 = (video[:, 0] * 255).round().astype(np.uint8)
  np.testing.assert_allclose(run.encode(as_uint8)[0],
                             run.encode(as_uint8.astype(np.float32) / 255)[0], atol=1e-6)
  assert isinstance(future, jax.Array)


def test_bad_inputs_are_named(run_dir, tmp_path):
  run = mipae_jax.load_run(run_dir)
  with pytest.raises(errors.DataError, match=r'expected \[N, H, W, C\] of \(32, 32, 3\) '
                                              r'frames .* shape \(4, 64, 64, 3\)'):
    run.encode(np.zeros((4, 64, 64, 3), np.float32))
  with pytest.raises(errors.ConfigError, match='num_future=0'):
    run.predict(np.zeros((1, 2, 32, 32, 3), np.float32), 0)
  with pytest.raises(errors.NotARunError, match='not a run directory'):
    mipae_jax.load_run(str(tmp_path))
