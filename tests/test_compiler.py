"""The project's executables compile with its CPU options; plain `jax.jit` does not."""

import jax
import jax.numpy as jnp
import numpy as np

from mipae_jax import compiler, cpu_kernels


def _conv_hlo(jit):
  # Large enough for XLA's cost model to offload it (compiled only, never run).
  x = jax.ShapeDtypeStruct((20, 32, 32, 64), jnp.float32)
  k = jax.ShapeDtypeStruct((4, 4, 64, 128), jnp.float32)
  return jit(cpu_kernels.conv4x4_down).lower(x, k).compile().as_text()


def test_cpu_convolutions_skip_ynnpack_only_in_our_executables():
  assert jax.default_backend() == 'cpu'
  assert compiler.options() == compiler.CPU_OPTIONS
  assert compiler.options('gpu') is None
  # The default pipeline offloads this convolution to YNNPACK; ours keeps it in XLA.
  assert '__ynn_fusion' in _conv_hlo(jax.jit)
  assert '__ynn_fusion' not in _conv_hlo(compiler.jit)


def test_options_do_not_change_results():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 16, 16, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(4, 4, 5, 7)), jnp.float32)
  np.testing.assert_allclose(compiler.jit(cpu_kernels.conv4x4_down)(x, k),
                             jax.jit(cpu_kernels.conv4x4_down)(x, k), rtol=1e-5, atol=1e-5)
