"""Alias of the packaged config `mipae_jax/configs/mnist.py` (`--config=mnist`), kept so that
commands and config files written for this path keep working."""

from mipae_jax.configs.mnist import *  # noqa: F403
from mipae_jax.configs.mnist import get_config  # noqa: F401
