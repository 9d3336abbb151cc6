"""The paper's Moving dSprites setting. Variants: `dsprites:mipae` (default),
`dsprites:drnet` (the DRNET baseline), `dsprites:smile`, or any other loss variant
(`mipae_jax.losses.VARIANTS`)."""

from mipae_jax.configs import default


def get_config(arg=None):
  return default.get_config(arg)
