"""The package version (read by setup.cfg and `mipae_jax.__version__`)."""

__version__ = '0.2.0'
