"""CPU demo: MIPAE on rendered Moving dSprites, small enough for a laptop.

Same method and losses as the paper; narrower networks (nf 16), batch 32 and 5 + 5 frames
so that the autoencoder disentangles within minutes on two CPU cores.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.batch_size = 32
  c.data.input_frames = 5
  c.data.target_frames = 5
  c.model.nf = 16
  c.train.ae_steps = 2000
  c.train.lstm_steps = 400
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.eval.mig_samples = 20_000
  c.eval.test_videos = 200
  c.eval.future_frames = 5
  return c
