"""The paper's Moving dSprites setting. Variants: `dsprites.py:mipae` (default),
`dsprites.py:drnet` (the DRNET baseline), `dsprites.py:smile`, or any other loss variant
(`mipae_jax.losses.VARIANTS`)."""

from experiments.configs import default
from mipae_jax import losses


def with_loss(c, arg):
  """Sets config.loss.name from the `path.py:variant` suffix."""
  name = arg or 'mipae'
  if name not in losses.names():
    raise ValueError(f'config variant {name!r}: expected one of {losses.names()}.')
  c.loss.name = name
  return c


def get_config(arg=None):
  return with_loss(default.get_config(), arg)
