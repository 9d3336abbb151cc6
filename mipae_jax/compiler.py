"""XLA compiler options for the jitted steps, per backend.

On CPU, XLA offloads convolutions to YNNPACK by default. For this project's
convolutions (4x4 stride-2 encoders, 2x2 decoder phases, batch 100) XLA's own Eigen
convolutions are faster: up to 1.7x forward and 2x for weight gradients on a 2-core
AVX-512 machine (`benchmarks/conv_backends.py` measures it side by side). The
options go to `jax.jit(..., compiler_options=...)`, so they apply to our executables
only and never change how the rest of a user's program compiles.
"""

from __future__ import annotations

from typing import Any

import jax

# An empty list of fusion types: no YNNPACK fusions, Eigen runs the convolutions.
CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def options(backend: str | None = None) -> dict[str, Any] | None:
  """The compiler options for `backend` (default: JAX's default backend); None if none."""
  backend = jax.default_backend() if backend is None else backend
  return dict(CPU_OPTIONS) if backend == 'cpu' else None


def jit(fun, **kwargs):
  """`jax.jit(fun, **kwargs)` with this project's compiler options for the default backend."""
  return jax.jit(fun, compiler_options=options(), **kwargs)

