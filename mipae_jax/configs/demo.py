"""CPU demo: MIPAE on rendered Moving dSprites, small enough for a laptop.

Same method, losses and 64x64 RGB frames as the paper; one sprite per video instead of
two, narrower networks (nf 16), batch 32 and 5 + 5 frames, so that content (shape, size)
and pose (position) separate within minutes on two CPU cores.
"""

from mipae_jax.configs import default


def get_config(arg=None):
  c = default.get_config()
  c.batch_size = 32
  c.data.input_frames = 5
  c.data.target_frames = 5
  c.data.num_objects = 1
  c.model.nf = 16
  c.train.ae_steps = 1500
  c.train.lstm_steps = 300
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.eval.mig_samples = 20_000
  c.eval.knn_content_mode = 'discrete'  # One sprite: 240 content labels, Ross (the paper's).
  c.eval.test_videos = 200
  c.eval.future_frames = 5
  c.eval.analogy_videos = 200
  # FVD off: on a CPU its I3D over 2 x 200 clips would take longer than the demo's training
  # (docs/fvd.md, "CPU cost"); eval.fvd_videos=200 turns it on.
  c.eval.fvd_videos = 0
  return default.with_loss(c, arg)
