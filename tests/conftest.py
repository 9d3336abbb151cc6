"""Test set-up: JAX sees 4 CPU devices (set before JAX is imported anywhere)."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
