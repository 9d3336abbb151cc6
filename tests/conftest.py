"""Test set-up: JAX sees 4 CPU devices (set before JAX is imported anywhere)."""

import atexit
import os
import shutil
import tempfile

# Optimisation level 0: tests run tiny programs, where XLA's compile time dominates.
os.environ.setdefault(
    'XLA_FLAGS', '--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# One persistent compilation cache for the session and every subprocess it starts: many
# tests build the same tiny programs again (a second run of a workdir, a resumed stage, a
# study's seeds), and a cached executable computes the same bits as a fresh compile.
# Fresh per session, so nothing carries over between runs of the suite.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='mipae-xla-cache-')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
