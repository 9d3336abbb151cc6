"""Test set-up: JAX sees 4 CPU devices (set before JAX is imported anywhere)."""

import os

# Optimisation level 0: tests run tiny programs, where XLA's compile time dominates.
os.environ.setdefault(
    'XLA_FLAGS', '--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
