"""The CPU kernel set: convolutions and BatchNorm sums with VJPs of their own.

Measured faster than XLA's own lowering on a 2-core CPU (`benchmarks/conv_backends.py`,
`BENCHMARKS.md`), and nowhere else yet: `config.model.kernels='auto'` uses them on CPU
only, XLA's convolutions and reductions (cuDNN and friends) on a GPU or TPU. Every
function here computes the same values as its `mipae_jax.layers` counterpart in the
XLA set (the tests compare values and gradients); only the way XLA:CPU is asked to
compute them differs, so parameters and checkpoints are the same under either set.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mipae_jax import layers


def channel_sum(a):
  """`a [..., C] -> [C]`, summed over every other axis.

  Written as a matrix-vector product: XLA:CPU rewrites a plain `sum` over the batch and
  spatial axes into a tree of reduce-windows that runs 2.5-10x slower than this on
  BatchNorm-sized activations (measured in `benchmarks/conv_backends.py`).
  """
  a = a.reshape(-1, a.shape[-1])
  return jnp.ones((a.shape[0],), a.dtype) @ a


@jax.custom_vjp
def add_bias(y, bias):
  """`y [..., C] + bias [C]`, whose bias gradient is a `channel_sum` (see there)."""
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, None


def _add_bias_bwd(_, dy):
  return dy, channel_sum(dy.astype(jnp.float32)).astype(dy.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def _psum_mean(sums, count: int, axis_name):
  """Per-channel sums on this device -> means over the global batch."""
  if axis_name is not None:
    sums = jax.lax.pmean(sums, axis_name)
  return sums / count


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float, axis_name: str | None):
  """Training-mode BatchNorm over every axis but the last, with its own VJP.

  `x [..., C]` (any float dtype; statistics in float32), `scale, bias [C]` ->
  `(y [..., C] in x.dtype, mean [C], var [C])`, `var` the biased batch variance.
  With `axis_name`, statistics are over the global batch of that device axis (each
  device holding the same number of rows), so the layer is SyncBatchNorm.

  The backward pass reads `x` and the output cotangent once each for the two channel
  sums it needs and once more for the input gradient, instead of differentiating the
  forward graph op by op.
  """
  return _bn_fwd(x, scale, bias, epsilon, axis_name)[0]


def _bn_fwd(x, scale, bias, epsilon, axis_name):
  x32 = x.astype(jnp.float32)
  count = x32.size // x32.shape[-1]
  # Corrected two-pass statistics (Chan, Golub & LeVeque 1983), PyTorch's precision.
  # E[x^2] - E[x]^2 in one pass cancels catastrophically in float32 once |mean| >> std
  # (error ~ eps (mean/std)^2: 1e-3 at a ratio of 10, 0.1 at 100, which photographs'
  # pixels and deep activations reach). So: a first mean m0, then the sums of the small
  # d = x - m0; the mean is m0 + E[d] (which also repairs m0's float32 accumulation
  # error) and the variance E[d^2] - E[d]^2, whose second term is ~eps^2. Every device
  # shares m0 under SyncBN. The second read of x costs ~15% of an isolated layer
  # (`benchmarks.conv_backends`), about 1% of a training step.
  m0 = _psum_mean(channel_sum(x32), count, axis_name)
  d = x32 - m0
  mean_d = _psum_mean(channel_sum(d), count, axis_name)
  mean_d2 = _psum_mean(channel_sum(d * d), count, axis_name)
  mean = m0 + mean_d
  var = jnp.maximum(mean_d2 - mean_d * mean_d, 0.0)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (d - mean_d) * (rstd * scale) + bias
  return (y.astype(x.dtype), mean, var), (x, mean, rstd, scale)


def _bn_bwd(epsilon, axis_name, res, cotangents):
  del epsilon
  x, mean, rstd, scale = res
  dy, dmean, dvar = cotangents
  x32, dy = x.astype(jnp.float32), dy.astype(jnp.float32)
  count = x32.size // x32.shape[-1]
  xhat = (x32 - mean) * rstd
  dbias = channel_sum(dy)
  dscale = channel_sum(dy * xhat)
  # d/dx of y through the statistics, plus any direct use of the returned mean and var.
  mean_dy = _psum_mean(dbias, count, axis_name)
  mean_dy_xhat = _psum_mean(dscale, count, axis_name)
  dmean = _psum_mean(dmean, count, axis_name)
  dvar = _psum_mean(dvar, count, axis_name)
  dx = ((scale * rstd) * (dy - mean_dy - xhat * mean_dy_xhat)
        + dmean + (2.0 / rstd) * xhat * dvar)
  return dx.astype(x.dtype), dscale, dbias


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


# ----------------------------------------------------- 4x4 stride-2 (transposed) convs.
#
# The DCGAN networks are made of `Conv2d(4, stride=2, padding=1)` and its transpose.
# XLA:CPU differentiates both badly when left to itself: the input gradient of the
# strided convolution becomes an input-dilated convolution, and the transposed
# convolution's weight gradient runs far below the forward pass's rate (BENCHMARKS.md,
# "Per-layer profile", by `python -m benchmarks.conv_backends`). The two operations are
# each other's input gradient, so each gets a custom VJP that computes its input gradient
# as the other one in its fast form. Both are exact; tests compare values and gradients
# with XLA's own convolutions.

# Output phase p of the transposed convolution (output row 2m + p) reads input rows
# (m - 1 + p, m + p) with kernel rows `_PHASE_TAPS[p]`; `_PHASE_PAD[p]` pads the input
# so that a VALID 2x2 convolution lines the rows up.
_PHASE_TAPS = {0: (3, 1), 1: (2, 0)}
_PHASE_PAD = {0: (1, 0), 1: (0, 1)}
# Kernel row ky of the transposed convolution lands in output phase `p` with input row
# offset `s` (output row 2m + p reads input row m - s).
_TAP_PHASE_SHIFT = {0: (1, -1), 1: (0, 0), 2: (1, 0), 3: (0, 1)}
# Below this many output channels the transposed convolution is one matmul followed by
# an overlap-add (a 2x2 convolution with 3 output channels wastes most of each SIMD
# register; the matmul with 16x the output columns does not).
_COL2IM_MAX_FEATURES = 16


def _upconv_by_phases(x, kernel):
  """Four stride-1 2x2 convolutions, one per output phase, interleaved."""
  rows = []
  for py in (0, 1):
    cols = []
    for px in (0, 1):
      k = jnp.stack([jnp.stack([kernel[ky, kx] for kx in _PHASE_TAPS[px]])
                     for ky in _PHASE_TAPS[py]])
      xp = jnp.pad(x, ((0, 0), _PHASE_PAD[py], _PHASE_PAD[px], (0, 0)))
      cols.append(layers.conv_valid(xp, k))
    rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2(px), C]
  y = jnp.stack(rows, axis=2)  # [B, H, 2(py), W, 2(px), C]
  b, h, _, w, _, c = y.shape
  return y.reshape(b, 2 * h, 2 * w, c)


def _shift(a, s: int, axis: int):
  """`out[i] = a[i - s]` along `axis`, zero where `i - s` is out of range (|s| <= 1)."""
  if s == 0:
    return a
  pad = [(0, 0)] * a.ndim
  n = a.shape[axis]
  if s > 0:
    pad[axis] = (1, 0)
    return jnp.pad(jax.lax.slice_in_dim(a, 0, n - 1, axis=axis), pad)
  pad[axis] = (0, 1)
  return jnp.pad(jax.lax.slice_in_dim(a, 1, n, axis=axis), pad)


def _upconv_by_col2im(x, kernel):
  """One matmul giving every input pixel's 4x4 output patch, then an overlap-add."""
  b, h, w, c = x.shape
  o = kernel.shape[-1]
  patches = (x.reshape(-1, c) @ kernel.transpose(2, 0, 1, 3).reshape(c, 16 * o))
  patches = patches.reshape(b, h, w, 4, 4, o)
  phases = {}
  for ky in range(4):
    py, sy = _TAP_PHASE_SHIFT[ky]
    for kx in range(4):
      px, sx = _TAP_PHASE_SHIFT[kx]
      t = _shift(_shift(patches[:, :, :, ky, kx], sy, 1), sx, 2)
      phases[py, px] = phases[py, px] + t if (py, px) in phases else t
  y = jnp.stack([jnp.stack([phases[py, px] for px in (0, 1)], axis=3) for py in (0, 1)],
                axis=2)
  return y.reshape(b, 2 * h, 2 * w, o)


def _upconv(x, kernel):
  if kernel.shape[-1] < _COL2IM_MAX_FEATURES:
    return _upconv_by_col2im(x, kernel)
  return _upconv_by_phases(x, kernel)


def _down(x, kernel):
  return layers.conv2d(x, kernel, 2, 1)


def _down_kernel_grad(x, kernel, dy):
  return jax.vjp(lambda k: _down(x, k), kernel)[1](dy)[0]


@jax.custom_vjp
def conv4x4_down(x, kernel):
  """`Conv2d(in, out, 4, stride=2, padding=1)` without bias.

  `x [B, 2H, 2W, in]`, `kernel [4, 4, in, out]` -> `[B, H, W, out]`. Its input gradient
  is the transposed convolution with the same kernel, computed by `_upconv`.
  """
  return _down(x, kernel)


def _down_fwd(x, kernel):
  return _down(x, kernel), (x, kernel)


def _down_bwd(res, dy):
  x, kernel = res
  return _upconv(dy, kernel.transpose(0, 1, 3, 2)), _down_kernel_grad(x, kernel, dy)


conv4x4_down.defvjp(_down_fwd, _down_bwd)


@jax.custom_vjp
def conv_transpose4x4_up(x, kernel):
  """`ConvTranspose2d(in, out, 4, stride=2, padding=1)` without bias.

  `x [B, H, W, in]`, `kernel [4, 4, in, out]` (PyTorch's weight `[in, out, kh, kw]`
  transposed) -> `[B, 2H, 2W, out]`. Its input gradient is the strided convolution with
  the same kernel; its kernel gradient is that convolution's kernel gradient with the
  roles of input and output swapped.
  """
  return _upconv(x, kernel)


def _up_fwd(x, kernel):
  return _upconv(x, kernel), (x, kernel)


def _up_bwd(res, dy):
  x, kernel = res
  kt = kernel.transpose(0, 1, 3, 2)
  return _down(dy, kt), _down_kernel_grad(dy, kt, x).transpose(0, 1, 3, 2)


conv_transpose4x4_up.defvjp(_up_fwd, _up_bwd)


CPU = layers.Kernels(
    name='cpu',
    conv4x4_down=conv4x4_down,
    conv_transpose4x4_up=conv_transpose4x4_up,
    add_bias=add_bias,
    batch_norm_train=batch_norm_train,
)
