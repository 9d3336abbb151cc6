"""Alias of the packaged config `mipae_jax/configs/default.py` (`--config=default`), kept so that
commands and config files written for this path keep working."""

from mipae_jax.configs.default import *  # noqa: F403
from mipae_jax.configs.default import get_config  # noqa: F401
