"""Aliases of the packaged configs (mipae_jax/configs)."""
