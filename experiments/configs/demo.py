"""Alias of the packaged config `mipae_jax/configs/demo.py` (`--config=demo`), kept so that
commands and config files written for this path keep working."""

from mipae_jax.configs.demo import *  # noqa: F403
from mipae_jax.configs.demo import get_config  # noqa: F401
