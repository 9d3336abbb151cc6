"""The paper's Moving dSprites setting. Variants: `dsprites.py:mipae` (default),
`dsprites.py:drnet` (the DRNET baseline), `dsprites.py:smile`."""

from experiments.configs import default
from mipae_jax.losses import LOSS_NAMES


def with_loss(c, arg):
  """Sets config.loss.name from the `path.py:variant` suffix."""
  name = arg or 'mipae'
  if name not in LOSS_NAMES:
    raise ValueError(f'config variant {name!r}: expected one of {LOSS_NAMES}.')
  c.loss.name = name
  return c


def get_config(arg=None):
  return with_loss(default.get_config(), arg)
