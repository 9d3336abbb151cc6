"""Building blocks shared by the MIPAE networks.

Every array is channels-last (`[B, H, W, C]`). Transposed-convolution kernels are
stored as `[kh, kw, in, out]` with PyTorch's `ConvTranspose2d` meaning (the weight
`w[in, out, kh, kw]` transposed), so published checkpoints convert by a transpose and
nothing else.

Convolutions that feed a BatchNorm carry no bias (`use_bias=False`). BatchNorm subtracts
the per-channel mean, so such a bias never changes an output and its gradient is exactly
zero: from a zero init it would stay zero, so leaving it out is the same model. Its
computed gradient is float-rounding noise, which Adam (dividing by the gradient's own
scale) turns into full learning-rate steps. The published code's biases drift that way
and make a run depend on summation order (device count, layout). `mipae_jax.convert`
folds a published bias into the running mean that follows it, which is exact.

How a layer is computed is a backend choice, not part of the model: every network is built
with one `Ops` holding a `Kernels` set, the functions its convolutions and BatchNorm call.
`XLA` (here) leaves them to XLA's own convolutions and reductions;
`mipae_jax.cpu_kernels.CPU` has VJPs of its own, measured faster on CPU only. Both give
the same parameters and the same values, so a checkpoint moves between them
(`config.model.kernels`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# docs/method.md section 1: conv/linear weights N(0, 0.02), biases 0; BatchNorm scale N(1, 0.02).
weight_init = nn.initializers.normal(stddev=0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


_DIMS = ('NHWC', 'HWIO', 'NHWC')


def conv2d(x, kernel, stride: int, padding):
  """`x [B, H, W, in]`, `kernel [k, k, in, out]`; `padding` an int (PyTorch's symmetric
  padding), 'VALID' or explicit pairs."""
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=_DIMS)


def conv_valid(x, kernel):
  return conv2d(x, kernel, 1, 'VALID')


# --------------------------------------------------------------- Kernel sets.


@dataclasses.dataclass(frozen=True)
class Kernels:
  """The functions a network's layers are computed with (one set per backend choice).

  conv4x4_down: `Conv2d(4, stride=2, padding=1)` without bias,
    `(x [B, 2H, 2W, in], kernel [4, 4, in, out]) -> [B, H, W, out]`.
  conv_transpose4x4_up: `ConvTranspose2d(4, stride=2, padding=1)` without bias,
    `(x [B, H, W, in], kernel [4, 4, in, out]) -> [B, 2H, 2W, out]`.
  add_bias: `(y [..., C], bias [C]) -> y + bias`.
  batch_norm_train: `(x [..., C], scale [C], bias [C], epsilon, axis_name) ->
    (y [..., C] in x.dtype, mean [C], biased var [C])`, statistics in float32 over every
    axis but the last (and over the device axis `axis_name`, when given: SyncBatchNorm).
  """
  name: str
  conv4x4_down: Callable
  conv_transpose4x4_up: Callable
  add_bias: Callable
  batch_norm_train: Callable


def _pmean(v, axis_name):
  return v if axis_name is None else jax.lax.pmean(v, axis_name)


def batch_norm_train(x, scale, bias, epsilon: float, axis_name: str | None):
  """Training-mode BatchNorm statistics and output, differentiated by XLA (see `Kernels`).

  Corrected two-pass statistics (Chan, Golub & LeVeque 1983), PyTorch's precision:
  E[x^2] - E[x]^2 in one pass cancels catastrophically in float32 once |mean| >> std. So
  a first mean m0, then the moments of d = x - m0; the mean is m0 + E[d] and the variance
  E[d^2] - E[d]^2. Both are exactly invariant to m0, so its gradient is stopped.
  """
  x32 = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  m0 = jax.lax.stop_gradient(_pmean(jnp.mean(x32, axes), axis_name))
  d = x32 - m0
  mean_d = _pmean(jnp.mean(d, axes), axis_name)
  mean_d2 = _pmean(jnp.mean(d * d, axes), axis_name)
  var = jnp.maximum(mean_d2 - mean_d * mean_d, 0.0)
  y = (d - mean_d) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
  return y.astype(x.dtype), m0 + mean_d, var


def conv4x4_down(x, kernel):
  return conv2d(x, kernel, 2, 1)


def conv_transpose4x4_up(x, kernel):
  """PyTorch's transposed convolution as XLA's input-dilated one: dilate the input by the
  stride, pad by kernel - 1 - padding = 2 and convolve with the spatially flipped kernel
  (`[kh, kw, in, out]` is already HWIO)."""
  return jax.lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), ((2, 2), (2, 2)),
                                      lhs_dilation=(2, 2), dimension_numbers=_DIMS)


def add_bias(y, bias):
  return y + bias


XLA = Kernels(name='xla', conv4x4_down=conv4x4_down,
              conv_transpose4x4_up=conv_transpose4x4_up, add_bias=add_bias,
              batch_norm_train=batch_norm_train)


# ------------------------------------------------------------------ Modules.


def dense(features: int, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Dense:
  return nn.Dense(features, kernel_init=weight_init, dtype=dtype, name=name)


class BatchNorm(nn.Module):
  """PyTorch's `BatchNorm2d` (and `SyncBatchNorm` with `axis_name`) over the last axis.

  Parameters `scale`, `bias` and statistics `mean`, `var` are named as flax's
  `nn.BatchNorm`'s, so checkpoints and converted PyTorch weights fit either. As in
  PyTorch, the running variance is updated with the unbiased batch variance
  (`n / (n - 1)` times the biased one used to normalise), and it is not updated while
  the module is being initialised.
  """
  use_running_average: bool
  axis_name: str | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  kernels: Kernels = XLA

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', bn_scale_init, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    x = x.astype(self.dtype)
    if self.use_running_average:
      rstd = jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = (x.astype(jnp.float32) - ra_mean.value) * (rstd * scale) + bias
      return y.astype(self.dtype)
    y, mean, var = self.kernels.batch_norm_train(x, scale, bias, self.epsilon,
                                                 self.axis_name)
    if not self.is_initializing():
      n = x.size // c * (1 if self.axis_name is None else jax.lax.axis_size(self.axis_name))
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(unbiased)
    return y


def leaky_relu(x):
  return nn.leaky_relu(x, negative_slope=0.2)


def _maybe_bias(module: nn.Module, y, use_bias: bool):
  """`y + bias` with the module's `bias [C]` parameter, by the module's kernel set."""
  if not use_bias:
    return y
  bias = module.param('bias', nn.initializers.zeros, (y.shape[-1],))
  return module.kernels.add_bias(y, bias.astype(y.dtype))


class Conv(nn.Module):
  """A square convolution, `[B, H, W, in] -> [B, H', W', out]`.

  Parameters are named and shaped as `nn.Conv`'s (`kernel [k, k, in, out]`, `bias` unless
  `use_bias=False`); `padding` is an int (PyTorch's symmetric padding) or 'VALID'. The
  DCGAN block's `Conv2d(4, stride=2, padding=1)` runs through the kernel set's
  `conv4x4_down`.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int | str = 0
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernels: Kernels = XLA

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', weight_init, (k, k, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if (k, self.stride, self.padding) == (4, 2, 1):
      y = self.kernels.conv4x4_down(x, kernel)
    else:
      y = conv2d(x, kernel, self.stride, self.padding)
    return _maybe_bias(self, y, self.use_bias)


class UpConv4x4(nn.Module):
  """`ConvTranspose2d(in, out, 4, stride=2, padding=1)`: `[B, H, W, in] -> [B, 2H, 2W, out]`.

  Computed by the kernel set's `conv_transpose4x4_up`.
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernels: Kernels = XLA

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', weight_init, (4, 4, x.shape[-1], self.features))
    y = self.kernels.conv_transpose4x4_up(x.astype(self.dtype), kernel.astype(self.dtype))
    return _maybe_bias(self, y, self.use_bias)


class ProjectUp(nn.Module):
  """`ConvTranspose2d(in, out, size, stride=1, padding=0)` on a 1x1 map.

  `[B, in] -> [B, size, size, out]`: a dense layer in disguise, computed as one matmul.
  """
  features: int
  size: int = 4
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernels: Kernels = XLA

  @nn.compact
  def __call__(self, z):
    kernel = self.param('kernel', weight_init,
                        (self.size, self.size, z.shape[-1], self.features))
    y = jnp.einsum('bi,yxio->byxo', z.astype(self.dtype), kernel.astype(self.dtype))
    return _maybe_bias(self, y, self.use_bias)


class ConvTranspose3x3(nn.Module):
  """`ConvTranspose2d(in, out, 3, stride=1, padding=1)`: a 'same' convolution with the
  spatially flipped kernel. `[B, H, W, in] -> [B, H, W, out]`."""
  features: int
  dtype: Dtype = jnp.float32
  kernels: Kernels = XLA

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', weight_init, (3, 3, x.shape[-1], self.features))
    xp = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = conv_valid(xp, kernel[::-1, ::-1].astype(self.dtype))
    return _maybe_bias(self, y, True)


@dataclasses.dataclass(frozen=True)
class Ops:
  """The layers of one network, made once with its numerics and passed to every block
  (as flax's ImageNet example passes `conv = partial(nn.Conv, ...)`), instead of each
  block declaring and forwarding `axis_name`, `dtype` and `kernels`.

  axis_name: the device axis of a data-parallel train step (SyncBatchNorm), or None.
  dtype: the compute dtype; parameters and BatchNorm statistics stay float32.
  kernels: how convolutions and BatchNorm are computed (`Kernels`); never the parameters.
  Each method returns a module; called inside a `nn.compact` method it becomes a child of
  that module under `name`, so parameter names do not depend on `Ops`.
  """
  axis_name: str | None = None
  dtype: Dtype = jnp.float32
  kernels: Kernels = XLA

  def conv(self, features: int, kernel: int, stride: int = 1, padding: int | str = 0,
           use_bias: bool = True, name: str | None = None) -> Conv:
    """A convolution with PyTorch's integer padding semantics (see `Conv`)."""
    return Conv(features, kernel, stride, padding, use_bias, dtype=self.dtype,
                kernels=self.kernels, name=name)

  def up4x4(self, features: int, use_bias: bool = True, name: str | None = None
            ) -> UpConv4x4:
    return UpConv4x4(features, use_bias, dtype=self.dtype, kernels=self.kernels, name=name)

  def project_up(self, features: int, size: int = 4, use_bias: bool = True,
                 name: str | None = None) -> ProjectUp:
    return ProjectUp(features, size, use_bias, dtype=self.dtype, kernels=self.kernels,
                     name=name)

  def conv_t3x3(self, features: int, name: str | None = None) -> ConvTranspose3x3:
    return ConvTranspose3x3(features, dtype=self.dtype, kernels=self.kernels, name=name)

  def norm(self, train: bool, name: str | None = None) -> BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here).

    In training, batch statistics are averaged over `axis_name` (when set), so a
    data-parallel step normalises exactly as one device holding the global batch would.
    """
    return BatchNorm(use_running_average=not train,
                     axis_name=self.axis_name if train else None, dtype=self.dtype,
                     kernels=self.kernels, name=name)


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
