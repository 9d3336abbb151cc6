"""Alias of the packaged config `mipae_jax/configs/tiny.py` (`--config=tiny`), kept so that
commands and config files written for this path keep working."""

from mipae_jax.configs.tiny import *  # noqa: F403
from mipae_jax.configs.tiny import get_config  # noqa: F401
