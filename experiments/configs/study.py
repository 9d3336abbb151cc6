"""Alias of the packaged config `mipae_jax/configs/study.py` (`--config=study`), kept so that
commands and config files written for this path keep working."""

from mipae_jax.configs.study import *  # noqa: F403
from mipae_jax.configs.study import get_config  # noqa: F401
