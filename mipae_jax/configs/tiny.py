"""Tiny variant for tests and smoke runs: 32x32 frames, narrow layers, few frames."""

from mipae_jax.configs import default


def get_config(arg=None):
  c = default.get_config()
  c.batch_size = 8
  c.data.image_size = 32
  c.data.input_frames = 2
  c.data.target_frames = 2
  c.model.nf = 8
  c.model.content_dim = 16
  c.model.pose_dim = 3
  c.model.critic_width = 32
  c.model.lstm_hidden = 16
  c.train.ae_steps = 2
  c.train.lstm_steps = 2
  c.train.log_every = 1
  c.train.ckpt_every = 1
  c.eval.mig_samples = 500
  c.eval.test_videos = 16
  c.eval.future_frames = 2
  # The classifier would train in every test run.
  c.eval.analogy_videos = 0
  # FVD needs clips of 9 frames or more (these have 2 + 2), and its I3D is slow on a CPU.
  c.eval.fvd_videos = 0
  return default.with_loss(c, arg)
