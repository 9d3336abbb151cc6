"""Building blocks shared by the MIPAE networks.

Every array is channels-last (`[B, H, W, C]`). Transposed-convolution kernels are
stored as `[kh, kw, in, out]` with PyTorch's `ConvTranspose2d` meaning (the weight
`w[in, out, kh, kw]` transposed), so published checkpoints convert by a transpose and
nothing else.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# SPEC init: conv and linear weights N(0, 0.02), biases 0; BatchNorm scale N(1, 0.02).
weight_init = nn.initializers.normal(stddev=0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def conv(features: int, kernel: int, stride: int = 1, padding: int | str = 0,
         dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """A biased convolution with PyTorch's integer padding semantics."""
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 kernel_init=weight_init, dtype=dtype, name=name)


def dense(features: int, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Dense:
  return nn.Dense(features, kernel_init=weight_init, dtype=dtype, name=name)


def batch_norm(train: bool, axis_name: str | None, dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here).

  With `axis_name` set, batch statistics are averaged over that device axis, so a
  data-parallel step normalises exactly as one device holding the global batch would.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      scale_init=bn_scale_init, axis_name=axis_name if train else None,
                      dtype=dtype, name=name)


def leaky_relu(x):
  return nn.leaky_relu(x, negative_slope=0.2)


def _conv_valid(x, kernel):
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding='VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class UpConv4x4(nn.Module):
  """`ConvTranspose2d(in, out, 4, stride=2, padding=1)`: `[B, H, W, in] -> [B, 2H, 2W, out]`.

  Computed as four stride-1 2x2 convolutions, one per output phase, then
  interleaved. Output row 2m takes input rows (m-1, m) with kernel rows (3, 1); row
  2m+1 takes rows (m, m+1) with kernel rows (2, 0); columns likewise. The result is
  exactly the transposed convolution, but XLA's CPU backend differentiates these
  small dense convolutions far faster than a strided transposed one (its weight
  gradient is the bottleneck of the decoder otherwise).
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', weight_init, (4, 4, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    # taps[phase] = (kernel indices for the window's first and second row, padding).
    taps = {0: ((3, 1), (1, 0)), 1: ((2, 0), (0, 1))}
    rows = []
    for py in (0, 1):
      (ky0, ky1), pad_y = taps[py]
      cols = []
      for px in (0, 1):
        (kx0, kx1), pad_x = taps[px]
        k = jnp.stack([jnp.stack([kernel[ky, kx] for kx in (kx0, kx1)])
                       for ky in (ky0, ky1)])
        xp = jnp.pad(x, ((0, 0), pad_y, pad_x, (0, 0)))
        cols.append(_conv_valid(xp, k))
      rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2(px), C]
    y = jnp.stack(rows, axis=2)  # [B, H, 2(py), W, 2(px), C]
    b, h, _, w, _, c = y.shape
    return y.reshape(b, 2 * h, 2 * w, c) + bias.astype(self.dtype)


class ProjectUp(nn.Module):
  """`ConvTranspose2d(in, out, size, stride=1, padding=0)` on a 1x1 map.

  `[B, in] -> [B, size, size, out]`: a dense layer in disguise, computed as one matmul.
  """
  features: int
  size: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    kernel = self.param('kernel', weight_init,
                        (self.size, self.size, z.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    y = jnp.einsum('bi,yxio->byxo', z.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class ConvTranspose3x3(nn.Module):
  """`ConvTranspose2d(in, out, 3, stride=1, padding=1)`: a 'same' convolution with the
  spatially flipped kernel. `[B, H, W, in] -> [B, H, W, out]`."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', weight_init, (3, 3, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    xp = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = _conv_valid(xp, kernel[::-1, ::-1].astype(self.dtype))
    return y + bias.astype(self.dtype)


class LSTMCell(nn.Module):
  """PyTorch-layout LSTM cell: gates (i, f, g, o), a bias on both the input and the
  hidden projection (as `torch.nn.LSTMCell`), init uniform(+-1/sqrt(hidden)).

  carry = (c [B, H], h [B, H]); `x [B, I] -> (carry, h [B, H])`.
  """
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    c, h = carry
    bound = 1.0 / self.hidden ** 0.5
    init = nn.initializers.uniform(scale=2 * bound)
    shifted = lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) - bound
    gates = (nn.Dense(4 * self.hidden, kernel_init=shifted, bias_init=shifted,
                      dtype=self.dtype, name='input')(x)
             + nn.Dense(4 * self.hidden, kernel_init=shifted, bias_init=shifted,
                        dtype=self.dtype, name='hidden')(h))
    i, f, g, o = jnp.split(gates.astype(jnp.float32), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h
