"""MIPAE in JAX."""
