"""XLA compiler options for the jitted steps, per backend.

On CPU, XLA offloads convolutions to YNNPACK by default. For this project's
convolutions (4x4 stride-2 encoders, 2x2 decoder phases, batch 100) XLA's own Eigen
convolutions are faster: up to 1.7x forward and 2x for weight gradients on a 2-core
AVX-512 machine (`benchmarks/conv_backends.py` measures it side by side). The
options go to `jax.jit(..., compiler_options=...)`, so they apply to our executables
only and never change how the rest of a user's program compiles.
"""

from __future__ import annotations

import collections
import copy
import functools
import json
import os
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


# Programs that run once (parameter initialisation): LLVM's level 1 instead of XLA's
# default 2. Initialisation is ~20 threefry expansions (~370 fusions): level 2 spends
# far longer compiling them than the program then runs. The values are bit-identical at
# both levels (tests/test_train.py checks it), so a run's initial parameters do not
# depend on this choice. BENCHMARKS.md, "Time to the first step", has the timings
# (`python -m benchmarks.first_step`).
ONCE_OPTIONS = {'xla_backend_optimization_level': 1}


def jit_once(fun, **kwargs):
  """`jax.jit` for a program run once per process, compiled for compile time (CPU; a
  level set in XLA_FLAGS is left to rule)."""
  chosen = 'xla_backend_optimization_level' in os.environ.get('XLA_FLAGS', '')
  opts = ONCE_OPTIONS if jax.default_backend() == 'cpu' and not chosen else None
  fast, plain = jax.jit(fun, compiler_options=opts, **kwargs), jax.jit(fun, **kwargs)

  def call(*args, **kw):
    # Inside another trace (`jax.eval_shape(create_train_state, ...)` when restoring) a
    # jit is nested, and JAX refuses compiler options there: nothing compiles anyway.
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kw)))
    return (plain if traced else fast)(*args, **kw)

  return call


def config_fingerprint(config) -> str:
  """A run config's values as one canonical string: equal strings, equal configs.
  Raises TypeError for a value JSON cannot hold."""
  return json.dumps(config.to_dict(), sort_keys=True)


def per_config(builder, maxsize: int = 16):
  """Memoises `builder(config, *args)`, a function that builds jitted programs for a run
  config, on the config's values and the other (hashable) arguments.

  JAX keeps a traced program with the function object it traced, and a builder makes
  new function objects at every call, so building one config's programs again in the
  same process (a resumed stage, a second run, a notebook cell run twice) traced and
  lowered them anew, which the compilation cache cannot spare (it is asked only after
  lowering). The builder gets a copy of the config, so later changes to the caller's
  config object never reach a program already built. The `maxsize` newest builds are
  kept. A builder makes functions, never arrays: the first build may happen inside a
  trace (a restore's `jax.eval_shape`), and an array made then would be that trace's
  value, kept past it.
  """
  cache = collections.OrderedDict()

  @functools.wraps(builder)
  def build(config, *args, **kwargs):
    try:
      key = (config_fingerprint(config), args, tuple(sorted(kwargs.items())))
      hash(key)
    except TypeError:  # A value with no canonical form: built anew, never shared.
      return builder(copy.deepcopy(config), *args, **kwargs)
    if key in cache:
      cache.move_to_end(key)
      return cache[key]
    made = builder(copy.deepcopy(config), *args, **kwargs)
    cache[key] = made
    if len(cache) > maxsize:
      cache.popitem(last=False)
    return made

  build.cache_clear = cache.clear
  return build
