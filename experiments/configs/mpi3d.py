"""Alias of the packaged config `mipae_jax/configs/mpi3d.py` (`--config=mpi3d`), kept so that
commands and config files written for this path keep working."""

from mipae_jax.configs.mpi3d import *  # noqa: F403
from mipae_jax.configs.mpi3d import get_config  # noqa: F401
