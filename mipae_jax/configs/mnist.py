"""The paper's Moving MNIST setting (DRNET style: two digits, one colour channel each).

Needs the MNIST files: `--config.data.path=DIR` holding the IDX `.gz` files, a
`mnist.npz`, or a TFDS data dir with a prepared `mnist`. Variants as in dsprites.
"""

from mipae_jax.configs import default


def get_config(arg=None):
  c = default.get_config()
  c.data.name = 'moving_mnist'
  return default.with_loss(c, arg)
