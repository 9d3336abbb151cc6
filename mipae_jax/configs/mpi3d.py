"""The paper's MPI3D-real setting: VGG content encoder and decoder with skips, ResNet-18
pose encoder, 10 pose dimensions, 200 epochs.

Needs `--config.data.path=.../mpi3d_real.npz` (or the extracted `.npy`). Variants as in
dsprites.
"""

from mipae_jax.configs import default


def get_config(arg=None):
  c = default.get_config()
  c.data.name = 'mpi3d'
  c.model.arch = 'vgg'
  c.model.pose_dim = 10
  c.model.skips = True
  c.train.ae_steps = 200 * 600
  return default.with_loss(c, arg)
