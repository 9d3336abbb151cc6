"""The MIPAE networks: content and pose encoders, decoder, critic and pose LSTM.

Frames are `[B, H, W, C]` floats in [0, 1]. Two families:
- `dcgan` (Moving MNIST, Moving dSprites): `ContentEncoder`, `PoseEncoder`, `Decoder`.
- `vgg` (MPI3D): `VGGContentEncoder`, `ResNetPoseEncoder`, `VGGDecoder`.
Each family is an `Architecture` in `ARCHITECTURES` (`register_architecture` adds one).
Submodule names follow the published PyTorch attribute names (`c1`..`c5`,
`upc1`..`upc5`, `layer1`..), so checkpoint keys are stable and map one to one.
A convolution that feeds a BatchNorm has no bias (why: `mipae_jax.layers`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mipae_jax import cpu_kernels, layers, registry
from mipae_jax.layers import Dtype


def dcgan_num_blocks(image_size: int) -> int:
  """Stride-2 blocks that take `image_size` down to the 4x4 map of the last conv."""
  n = int(round(math.log2(image_size))) - 2
  if image_size < 16 or 2 ** (n + 2) != image_size:
    raise ValueError(
        f'dcgan networks take square frames whose side is a power of two >= 16 '
        f'(the paper uses 64); got image_size={image_size}.')
  return n


class DCGANBlock(nn.Module):
  """4x4 stride-2 conv (or transposed conv with `up`) -> BatchNorm -> LeakyReLU(0.2)."""
  features: int
  up: bool = False
  ops: layers.Ops = layers.Ops()

  @nn.compact
  def __call__(self, x, train: bool):
    if self.up:
      x = self.ops.up4x4(self.features, use_bias=False, name='conv')(x)
    else:
      x = self.ops.conv(self.features, 4, 2, 1, use_bias=False, name='conv')(x)
    return layers.leaky_relu(self.ops.norm(train, name='bn')(x))


class _DCGANEncoder(nn.Module):
  """Shared body of both DCGAN encoders: `[B, H, W, C] -> ([B, dim], block outputs)`."""
  dim: int
  nf: int = 64
  ops: layers.Ops = layers.Ops()

  def blocks(self, x, train: bool):
    """The stride-2 blocks `c1`..`cn`: `x -> (4x4 map, block outputs)`."""
    skips = []
    h = x
    for i in range(dcgan_num_blocks(x.shape[1])):
      h = DCGANBlock(self.nf * 2 ** i, ops=self.ops, name=f'c{i + 1}')(h, train)
      skips.append(h)
    return h, skips

  def encode(self, x, train: bool):
    n = dcgan_num_blocks(x.shape[1])
    h, skips = self.blocks(x, train)
    h = self.ops.conv(self.dim, 4, 1, 'VALID', use_bias=False, name=f'c{n + 1}_conv')(h)
    h = self.ops.norm(train, name=f'c{n + 1}_bn')(h)
    z = jnp.tanh(h.astype(jnp.float32)).reshape(x.shape[0], self.dim)
    return z, tuple(skips)


class ContentEncoder(_DCGANEncoder):
  """E_c: `x [B, H, W, C] -> (z_c [B, dim], skips)`; skips are the block outputs, from
  `[B, H/2, W/2, nf]` down to `[B, 4, 4, nf * 2^(n-1)]`."""
  dim: int = 128

  @nn.compact
  def __call__(self, x, train: bool = True):
    return self.encode(x, train)


def l2_normalize(z, eps: float = 1e-12):
  """`z [B, D] / max(||z||, eps)` per row, as PyTorch's `F.normalize(z, dim=1)`."""
  return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), eps)


class PoseEncoder(_DCGANEncoder):
  """E_p: `x [B, H, W, C] -> z_p [B, dim]` (tanh-bounded; unit L2 norm if `normalize`,
  the published `--normalize_position`)."""
  dim: int = 5
  normalize: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    z = self.encode(x, train)[0]
    return l2_normalize(z) if self.normalize else z


class Decoder(nn.Module):
  """D: `(z_c [B, Dc], z_p [B, Dp], skips) -> frame [B, H, W, channels]` in (0, 1).

  With `skips`, each up-block's input is concatenated (after its own features) with the
  content encoder's block output of the same size.
  """
  channels: int = 3
  image_size: int = 64
  nf: int = 64
  skips: bool = False
  ops: layers.Ops = layers.Ops()

  @nn.compact
  def __call__(self, z_c, z_p, skips: Sequence[jax.Array] | None = None,
               train: bool = True):
    n = dcgan_num_blocks(self.image_size)
    if self.skips and (skips is None or len(skips) != n):
      raise ValueError(f'Decoder(skips=True) needs the {n} content-encoder block outputs.')
    z = jnp.concatenate([z_c, z_p], axis=-1)
    h = self.ops.project_up(self.nf * 2 ** (n - 1), 4, use_bias=False, name='upc1_conv')(z)
    h = layers.leaky_relu(self.ops.norm(train, name='upc1_bn')(h))
    for i in range(n - 1):
      if self.skips:
        h = jnp.concatenate([h, skips[n - 1 - i].astype(h.dtype)], axis=-1)
      h = DCGANBlock(self.nf * 2 ** (n - 2 - i), up=True, ops=self.ops,
                     name=f'upc{i + 2}')(h, train)
    if self.skips:
      h = jnp.concatenate([h, skips[0].astype(h.dtype)], axis=-1)
    h = self.ops.up4x4(self.channels, name=f'upc{n + 1}_conv')(h)
    return jax.nn.sigmoid(h.astype(jnp.float32))


class Critic(nn.Module):
  """C (DRNET's scene discriminator): `(a [B, Dp], b [B, Dp]) -> score T [B]`, unbounded."""
  width: int = 512
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, a, b):
    h = jnp.concatenate([a, b], axis=-1)
    h = nn.relu(layers.dense(self.width, self.dtype, name='fc1')(h))
    h = nn.relu(layers.dense(self.width, self.dtype, name='fc2')(h))
    return layers.dense(1, self.dtype, name='fc3')(h)[..., 0].astype(jnp.float32)


class PoseLSTM(nn.Module):
  """L: one step of the pose predictor.

  `(carry, x [B, Dp + Dc]) -> (carry, pose [B, Dp])`: Linear(in -> hidden), `layers`
  stacked LSTM cells, Linear(hidden -> Dp), tanh. `x` is concat(previous pose, content).
  """
  pose_dim: int = 5
  hidden: int = 256
  num_layers: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    h = layers.dense(self.hidden, self.dtype, name='embed')(x)
    new_carry = []
    for i in range(self.num_layers):
      layer_carry, h = layers.LSTMCell(self.hidden, dtype=self.dtype,
                                       name=f'lstm{i}')(carry[i], h)  # ((c, h), h).
      new_carry.append(layer_carry)
    out = layers.dense(self.pose_dim, self.dtype, name='output')(h)
    return tuple(new_carry), jnp.tanh(out.astype(jnp.float32))

  def initial_carry(self, batch_size: int):
    zeros = jnp.zeros((batch_size, self.hidden), jnp.float32)
    return tuple((zeros, zeros) for _ in range(self.num_layers))


# --------------------------------------------------------------------------- MPI3D.


class VGGLayer(nn.Module):
  """3x3 conv (pad 1) -> BatchNorm -> LeakyReLU(0.2)."""
  features: int
  ops: layers.Ops = layers.Ops()

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.ops.conv(self.features, 3, 1, 1, use_bias=False, name='conv')(x)
    return layers.leaky_relu(self.ops.norm(train, name='bn')(x))


def _max_pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def _upsample(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _require_64(x, what):
  if x.shape[1:3] != (64, 64):
    raise ValueError(f'{what} takes 64x64 frames (as MPI3D provides); got {x.shape[1:3]}.')


_VGG_STAGES = ((2, 1), (2, 2), (3, 4), (3, 8))  # (layers, width / nf) per stage.


class VGGContentEncoder(nn.Module):
  """MPI3D E_c: VGG stacks (2, 2, 3, 3 layers; nf..8nf) with max-pooling, 4x4 valid conv,
  BatchNorm, tanh. `x [B, 64, 64, C] -> (z_c [B, dim], skips)`, skips at 64, 32, 16, 8."""
  dim: int = 128
  nf: int = 64
  ops: layers.Ops = layers.Ops()

  @nn.compact
  def __call__(self, x, train: bool = True):
    _require_64(x, 'VGGContentEncoder')
    skips = []
    h = x
    for s, (depth, mult) in enumerate(_VGG_STAGES):
      if s:
        h = _max_pool(h)
      for j in range(depth):
        h = VGGLayer(self.nf * mult, self.ops, name=f'c{s + 1}_{j}')(h, train)
      skips.append(h)
    h = self.ops.conv(self.dim, 4, 1, 'VALID', use_bias=False, name='c5_conv')(_max_pool(h))
    h = self.ops.norm(train, name='c5_bn')(h)
    return jnp.tanh(h.astype(jnp.float32)).reshape(x.shape[0], self.dim), tuple(skips)


class VGGDecoder(nn.Module):
  """MPI3D D: project to 4x4, then nearest-neighbour upsampling and VGG stacks that each
  take the matching content skip. `(z_c, z_p, skips) -> [B, 64, 64, channels]`."""
  channels: int = 3
  nf: int = 64
  ops: layers.Ops = layers.Ops()

  @nn.compact
  def __call__(self, z_c, z_p, skips, train: bool = True):
    nf, ops = self.nf, self.ops
    h = ops.project_up(8 * nf, 4, use_bias=False, name='upc1_conv')(
        jnp.concatenate([z_c, z_p], axis=-1))
    h = layers.leaky_relu(ops.norm(train, name='upc1_bn')(h))
    stages = ((8, 8, 4), (4, 4, 2), (2, 1), (1,))  # widths / nf of each stage's layers.
    for s, widths in enumerate(stages):
      h = jnp.concatenate([_upsample(h), skips[3 - s].astype(h.dtype)], axis=-1)
      for j, mult in enumerate(widths):
        h = VGGLayer(nf * mult, ops, name=f'upc{s + 2}_{j}')(h, train)
    h = ops.conv_t3x3(self.channels, name='upc5_out')(h)
    return jax.nn.sigmoid(h.astype(jnp.float32))


class BasicBlock(nn.Module):
  """ResNet basic block: 3x3 conv, BN, ReLU, 3x3 conv, BN, residual (1x1 conv + BN where
  the shape changes), ReLU."""
  features: int
  stride: int = 1
  ops: layers.Ops = layers.Ops()

  @nn.compact
  def __call__(self, x, train: bool):
    ops = self.ops
    h = ops.conv(self.features, 3, self.stride, 1, use_bias=False, name='conv1')(x)
    h = nn.relu(ops.norm(train, name='bn1')(h))
    h = ops.conv(self.features, 3, 1, 1, use_bias=False, name='conv2')(h)
    h = ops.norm(train, name='bn2')(h)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = ops.conv(self.features, 1, self.stride, 0, use_bias=False,
                   name='downsample_conv')(x)
      x = ops.norm(train, name='downsample_bn')(x)
    return nn.relu(h + x)


class ResNetPoseEncoder(nn.Module):
  """MPI3D E_p, ResNet-18 style: 5x5/2 conv (pad 3), BN, ReLU, 3x3/2 max-pool, four
  stages of two basic blocks (nf..8nf), 3x3 valid conv, BN, tanh.
  `x [B, 64, 64, C] -> z_p [B, dim]` (spatial 64 -> 33 -> 17 -> 17 -> 9 -> 5 -> 3 -> 1)."""
  dim: int = 10
  nf: int = 64
  normalize: bool = False  # Unit L2 norm (the published `--normalize_position`).
  ops: layers.Ops = layers.Ops()

  @nn.compact
  def __call__(self, x, train: bool = True):
    _require_64(x, 'ResNetPoseEncoder')
    ops = self.ops
    h = ops.conv(self.nf, 5, 2, 3, use_bias=False, name='conv1')(x)
    h = nn.relu(ops.norm(train, name='bn1')(h))
    h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, mult in enumerate((1, 2, 4, 8)):
      for j in range(2):
        stride = 2 if (s > 0 and j == 0) else 1
        h = BasicBlock(self.nf * mult, stride, ops, name=f'layer{s + 1}_{j}')(h, train)
    h = ops.conv(self.dim, 3, 1, 'VALID', use_bias=False, name='conv_out')(h)
    h = ops.norm(train, name='bn_out')(h)
    z = jnp.tanh(h.astype(jnp.float32)).reshape(x.shape[0], self.dim)
    return l2_normalize(z) if self.normalize else z


# ----------------------------------------------------------------------- Factory.

KERNEL_CHOICES = ('auto', 'xla', 'cpu')


def kernels_for(choice: str, backend: str | None = None) -> layers.Kernels:
  """The kernel set of `config.model.kernels`: 'xla', 'cpu', or 'auto' (the CPU set on
  the CPU backend, where it was measured faster; XLA's own everywhere else).

  `backend` defaults to `jax.default_backend()`.
  """
  if choice not in KERNEL_CHOICES:
    raise ValueError(f'config.model.kernels must be one of {KERNEL_CHOICES}; got {choice!r}.')
  if choice == 'auto':
    choice = 'cpu' if (backend or jax.default_backend()) == 'cpu' else 'xla'
  return cpu_kernels.CPU if choice == 'cpu' else layers.XLA


@dataclasses.dataclass(frozen=True)
class Architecture:
  """One `config.model.arch`: its three autoencoder networks.

  build: `(model_config, data_config, common) -> (content_encoder, pose_encoder, decoder)`,
    where `common` holds the keyword arguments every network takes: `nf` and `ops` (the
    `layers.Ops` its blocks make their convolutions and BatchNorms with).
  check: `(model_config, data_config) -> None | str`, what about the config (frame size,
    say) the networks cannot take.
  takes_skips: `model_config -> bool`, whether the decoder takes E_c's block outputs.
  """
  build: Callable
  check: Callable
  takes_skips: Callable


ARCHITECTURES: registry.Registry[Architecture] = registry.Registry('config.model.arch')


def register_architecture(name: str, arch: Architecture) -> Architecture:
  """Makes `arch` selectable as `config.model.arch = name`; refuses a name already
  registered."""
  return ARCHITECTURES.register(name, arch)


def architecture(name: str) -> Architecture:
  return ARCHITECTURES.lookup(name)


def _dcgan_check(model_config, data_config):
  try:
    dcgan_num_blocks(data_config.image_size)
  except ValueError:
    return (f'config.data.image_size={data_config.image_size!r} is not allowed: expected a '
            f'power of two >= 16 for the dcgan networks (the paper uses 64).')
  return None


def _vgg_check(model_config, data_config):
  if data_config.image_size != 64:
    return (f'config.data.image_size={data_config.image_size!r} is not allowed: expected 64 '
            f'for the vgg (MPI3D) networks.')
  return None


register_architecture('dcgan', Architecture(
    build=lambda m, d, common: (
        ContentEncoder(dim=m.content_dim, **common),
        PoseEncoder(dim=m.pose_dim, normalize=m.normalize_pose, **common),
        Decoder(channels=d.channels, image_size=d.image_size, skips=m.skips, **common)),
    check=_dcgan_check,
    takes_skips=lambda m: bool(m.skips)))
register_architecture('vgg', Architecture(
    build=lambda m, d, common: (
        VGGContentEncoder(dim=m.content_dim, **common),
        ResNetPoseEncoder(dim=m.pose_dim, normalize=m.normalize_pose, **common),
        VGGDecoder(channels=d.channels, **common)),
    check=_vgg_check,
    takes_skips=lambda m: True))


def build_models(model_config, data_config, axis_name: str | None = None) -> dict:
  """The four autoencoder-stage modules for a config, plus the LSTM.

  Returns {'content_encoder', 'pose_encoder', 'decoder', 'critic', 'lstm'}. Module
  objects are cheap descriptions; building them per step (with the step's
  `axis_name`) costs nothing and gives the same parameter trees. The kernel set
  (`model_config.kernels`) changes how layers are computed, never the parameters.
  """
  dt = jnp.dtype(model_config.dtype)
  common = dict(nf=model_config.nf, ops=layers.Ops(axis_name, dt,
                                                   kernels_for(model_config.kernels)))
  ec, ep, dec = architecture(model_config.arch).build(model_config, data_config, common)
  return {
      'content_encoder': ec,
      'pose_encoder': ep,
      'decoder': dec,
      'critic': Critic(width=model_config.critic_width, dtype=dt),
      'lstm': PoseLSTM(pose_dim=model_config.pose_dim, hidden=model_config.lstm_hidden,
                       num_layers=model_config.lstm_layers, dtype=dt),
  }


@dataclasses.dataclass(frozen=True)
class Networks:
  """The networks of one config, built once (`networks(config)`), with the calls every
  stage makes. Variables are `{'params': ..., 'batch_stats': ...}` trees keyed by network
  name (`AE_PARTS`), as `train.AEState` and `train.autoencoder_variables` hold them.

  `train=True` calls return the updated BatchNorm statistics with the output; inference
  calls (`train=False`) use the running statistics and return the output alone.
  """
  content_encoder: nn.Module
  pose_encoder: nn.Module
  decoder: nn.Module
  critic: nn.Module
  lstm: nn.Module
  takes_skips: bool

  def _apply(self, name, params, stats, *args, train: bool):
    variables = {'params': params[name], 'batch_stats': stats[name]}
    module = getattr(self, name)
    if not train:
      return module.apply(variables, *args, train=False)
    out, upd = module.apply(variables, *args, train=True, mutable=['batch_stats'])
    return out, {**stats, name: upd['batch_stats']}

  def content(self, params, stats, x, train: bool = False):
    """`x [B, H, W, C]` -> `(z_c [B, Dc], skips)` (and the new stats if `train`)."""
    return self._apply('content_encoder', params, stats, x, train=train)

  def pose(self, params, stats, x, train: bool = False):
    """`x [B, H, W, C]` -> `z_p [B, Dp]` (and the new stats if `train`)."""
    return self._apply('pose_encoder', params, stats, x, train=train)

  def decode(self, params, stats, z_c, z_p, skips, train: bool = False):
    """`(z_c [B, Dc], z_p [B, Dp], skips)` -> frames `[B, H, W, C]`; skips are dropped
    unless the decoder takes them."""
    return self._apply('decoder', params, stats, z_c, z_p,
                       skips if self.takes_skips else None, train=train)

  def score(self, critic_params, a, b):
    """Critic scores of pose pairs `a, b [..., Dp]` -> `[...]`."""
    return self.critic.apply({'params': critic_params}, a, b)

  def lstm_step(self, lstm_params, carry, x):
    """One pose-LSTM step: `x [B, Dp + Dc]` -> `(carry, pose [B, Dp])`."""
    return self.lstm.apply({'params': lstm_params}, carry, x)


AE_PARTS = ('content_encoder', 'pose_encoder', 'decoder')


def networks(config, axis_name: str | None = None) -> Networks:
  """The `Networks` of a run config (`axis_name`: the device axis of a data-parallel
  train step, for SyncBatchNorm)."""
  m = build_models(config.model, config.data, axis_name)
  return Networks(**m, takes_skips=uses_skips(config.model))


def uses_skips(model_config) -> bool:
  """Whether the decoder takes skips: VGG decoders always, DCGAN decoders when configured."""
  return architecture(model_config.arch).takes_skips(model_config)
