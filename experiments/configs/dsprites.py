"""Alias of the packaged config `mipae_jax/configs/dsprites.py` (`--config=dsprites`), kept so that
commands and config files written for this path keep working."""

from mipae_jax.configs.dsprites import *  # noqa: F403
from mipae_jax.configs.dsprites import get_config  # noqa: F401
