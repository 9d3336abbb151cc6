"""Weights of the published PyTorch MIPAE code -> mipae_jax parameter trees.

  sds = load_torch_checkpoint('dsprites-400.pth')          # never unpickles code
  params, batch_stats = from_torch_state_dict(sds, config)
  # params: {'content_encoder', 'pose_encoder', 'decoder', 'critic', 'lstm'} (those given)
  # batch_stats: {'content_encoder', 'pose_encoder', 'decoder'} (BN running statistics)
  write_run_directory(config, 'runs/published', 'dsprites-400.pth', 'dsprites-lstm.pth')
  # A run directory mipae-evaluate reads as one mipae-train made (the mipae-convert
  # command; docs/convert.md).

Loading never runs code from the file (`torch.load(..., weights_only=True)`); a file that
cannot be loaded that way is refused, and the message never advises loading it otherwise.

The published checkpoint is one dict holding a `state_dict` per network under
`content_encoder`, `position_encoder`, `decoder`, `discriminator` (autoencoder run) or
`lstm` (LSTM run), next to optimiser states (ignored) and an iteration counter
(`global_itr`: the step of a run directory written from it). Both those names and the
mipae_jax names (`pose_encoder`, `critic`) are accepted.

Layouts: conv weights `[out, in, kh, kw]` -> `[kh, kw, in, out]`; transposed-conv weights
`[in, out, kh, kw]` -> `[kh, kw, in, out]` (see `mipae_jax.layers`); linear weights
`[out, in]` -> `[in, out]`; BatchNorm weight/bias/running_mean/running_var -> scale/bias
(params) and mean/var (batch_stats). `num_batches_tracked` is not used (momentum is fixed).

A published convolution that feeds a BatchNorm has a bias; mipae_jax's has none (see
`mipae_jax.layers`). Such a bias `b` is folded into the BatchNorm's running mean as
`mean - b`, which is exact: in inference mode `(conv + b - mean)` equals
`(conv - (mean - b))`, and in training mode the batch mean removes `b` anyway.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mipae_jax import config_record, configuration, errors, train
from mipae_jax.checkpoint import CheckpointStore
from mipae_jax.models import build_models, dcgan_num_blocks, uses_skips
from mipae_jax.runs import autoencoder_record

# Published checkpoint names -> mipae_jax names.
ALIASES = {'position_encoder': 'pose_encoder', 'discriminator': 'critic'}
NETWORKS = ('content_encoder', 'pose_encoder', 'decoder', 'critic', 'lstm')
_BN_STATS = ('content_encoder', 'pose_encoder', 'decoder')


class ConversionError(errors.UserError, ValueError):
  """A state_dict that does not fit the configured networks (names or shapes)."""


def check_published_options(options: Mapping, config) -> None:
  """Refuses a config that would run published weights differently than they were
  trained: `options` are the run's flags where the checkpoint records them (a plain
  dict, e.g. `{'normalize_position': True}`); missing flags are not checked.

  `--normalize_position` is `config.model.normalize_pose`, `--recon_loss_type` is
  `config.loss.recon`; `--content_lstm` is not implemented, so it is refused.
  """
  if options.get('content_lstm'):
    raise ConversionError(
        'the checkpoint was trained with the published --content_lstm, a variant mipae_jax '
        'does not implement; its weights cannot be converted.')
  if 'normalize_position' in options:
    want = bool(options['normalize_position'])
    if config.model.normalize_pose != want:
      raise ConversionError(
          f'the checkpoint was trained with the published --normalize_position={want}: set '
          f'config.model.normalize_pose={want}, or its pose codes come out wrong (unit '
          'L2 norm in the published run).')
  if 'recon_loss_type' in options:
    value = str(options['recon_loss_type'])
    if value != str(config.loss.recon):
      raise ConversionError(
          f'the checkpoint was trained with the published --recon_loss_type {value}: set '
          f'config.loss.recon={value!r} to train on from it as it was trained.')


def _check_lstm_variant(sd: Mapping, config) -> None:
  """Names the published LSTM variants mipae_jax does not implement, instead of a
  missing key: the Gaussian LSTM (mu/logvar heads) and the --content_lstm."""
  heads = sorted({k.split('.')[0] for k in sd} & {'mu_net', 'logvar_net'})
  if heads:
    raise ConversionError(
        f'lstm: the state_dict has {" and ".join(heads)} heads: it is the published '
        'Gaussian (stochastic) LSTM, a variant mipae_jax does not implement; only the '
        'deterministic pose LSTM (embed, lstm.N, output.0) converts.')
  if 'embed.weight' not in sd or 'output.0.weight' not in sd:
    some = ', '.join(sorted(sd)[:6])
    raise ConversionError(
        f'lstm: keys {some} are not those of the published pose LSTM (embed, lstm.N, '
        'output.0): a checkpoint of the published --content_lstm or Gaussian LSTM '
        'variants, which mipae_jax does not implement, cannot be converted.')
  rows = _as_numpy(sd['output.0.weight']).shape[0]
  if rows != config.model.pose_dim:
    raise ConversionError(
        f'lstm: its output layer predicts {rows} values per step, not the '
        f'{config.model.pose_dim} of a pose (config.model.pose_dim): a checkpoint of the '
        'published --content_lstm (which mipae_jax does not implement), or of a run with '
        'another z_dims (then set config.model.pose_dim).')


# ------------------------------------------------------------ Name mapping rules.
# Each rule maps a mipae_jax module path ('/'-joined) to (torch module prefix, kind).
# kind picks the leaf names and the weight transpose.


def _dcgan_rules(net: str, n: int):
  if net == 'content_encoder':
    return [(r'c(\d+)/conv', r'c\1.main.0', 'conv'), (r'c(\d+)/bn', r'c\1.main.1', 'bn'),
            (f'c{n + 1}_conv', f'c{n + 1}.0', 'conv'), (f'c{n + 1}_bn', f'c{n + 1}.1', 'bn')]
  if net == 'pose_encoder':
    return [(r'c(\d+)/conv', lambda m: f'main.{int(m[1]) - 1}.main.0', 'conv'),
            (r'c(\d+)/bn', lambda m: f'main.{int(m[1]) - 1}.main.1', 'bn'),
            (f'c{n + 1}_conv', f'main.{n}', 'conv'), (f'c{n + 1}_bn', f'main.{n + 1}', 'bn')]
  return [('upc1_conv', 'upc1.0', 'convT'), ('upc1_bn', 'upc1.1', 'bn'),
          (r'upc(\d+)/conv', r'upc\1.main.0', 'convT'), (r'upc(\d+)/bn', r'upc\1.main.1', 'bn'),
          (f'upc{n + 1}_conv', f'upc{n + 1}.0', 'convT')]


def _vgg_rules(net: str):
  if net == 'content_encoder':
    return [(r'c(\d)_(\d)/conv', r'c\1.\2.main.0', 'conv'),
            (r'c(\d)_(\d)/bn', r'c\1.\2.main.1', 'bn'),
            ('c5_conv', 'c5.0', 'conv'), ('c5_bn', 'c5.1', 'bn')]
  if net == 'pose_encoder':  # ResNet-18 style, every key under `main.`.
    return [(r'layer(\d)_(\d)/downsample_conv', r'main.layer\1.\2.downsample.0', 'conv'),
            (r'layer(\d)_(\d)/downsample_bn', r'main.layer\1.\2.downsample.1', 'bn'),
            (r'layer(\d)_(\d)/(conv\d)', r'main.layer\1.\2.\3', 'conv'),
            (r'layer(\d)_(\d)/(bn\d)', r'main.layer\1.\2.\3', 'bn'),
            (r'(conv1|conv_out)', r'main.\1', 'conv'), (r'(bn1|bn_out)', r'main.\1', 'bn')]
  return [('upc1_conv', 'upc1.0', 'convT'), ('upc1_bn', 'upc1.1', 'bn'),
          (r'upc(\d)_(\d)/conv', r'upc\1.\2.main.0', 'conv'),
          (r'upc(\d)_(\d)/bn', r'upc\1.\2.main.1', 'bn'),
          ('upc5_out', 'upc5.1', 'convT')]


_CRITIC_RULES = [(r'fc(\d)', lambda m: f'main.{2 * (int(m[1]) - 1)}', 'dense')]
_LSTM_RULES = [('embed', 'embed', 'dense'), ('output', 'output.0', 'dense'),
               (r'lstm(\d+)/input', r'lstm.\1', 'lstm_ih'),
               (r'lstm(\d+)/hidden', r'lstm.\1', 'lstm_hh')]

# kind -> {mipae_jax leaf: (torch suffix, numpy transform of the torch array)}.
_KINDS = {
    'conv': {'kernel': ('weight', lambda w: w.transpose(2, 3, 1, 0)), 'bias': ('bias', None)},
    'convT': {'kernel': ('weight', lambda w: w.transpose(2, 3, 0, 1)), 'bias': ('bias', None)},
    'dense': {'kernel': ('weight', lambda w: w.T), 'bias': ('bias', None)},
    'lstm_ih': {'kernel': ('weight_ih', lambda w: w.T), 'bias': ('bias_ih', None)},
    'lstm_hh': {'kernel': ('weight_hh', lambda w: w.T), 'bias': ('bias_hh', None)},
    'bn': {'scale': ('weight', None), 'bias': ('bias', None),
           'mean': ('running_mean', None), 'var': ('running_var', None)},
}
_IGNORED_SUFFIXES = ('num_batches_tracked',)


# Published state_dict names per architecture: `(net, config) -> rules` for the three
# autoencoder networks (the critic and LSTM are shared). A new architecture with a
# PyTorch counterpart adds its rules here.
PUBLISHED_NAMES = {
    'dcgan': lambda net, config: _dcgan_rules(net, dcgan_num_blocks(config.data.image_size)),
    'vgg': lambda net, config: _vgg_rules(net),
}


def _rules(net: str, config):
  if net == 'critic':
    return _CRITIC_RULES
  if net == 'lstm':
    return _LSTM_RULES
  if config.model.arch not in PUBLISHED_NAMES:
    raise ConversionError(
        f'config.model.arch={config.model.arch!r} has no published PyTorch names to convert '
        f'from (known: {tuple(PUBLISHED_NAMES)}); add its rules to convert.PUBLISHED_NAMES.')
  return PUBLISHED_NAMES[config.model.arch](net, config)


def torch_key(net: str, jax_path: tuple[str, ...], config) -> tuple[str, object]:
  """The published state_dict key of one mipae_jax leaf, and the transform to apply.

  `jax_path` is the leaf's path inside the network's params (or batch_stats) tree, e.g.
  `('c1', 'conv', 'kernel')` -> `('c1.main.0.weight', transpose)`.
  """
  module, leaf = '/'.join(jax_path[:-1]), jax_path[-1]
  for pattern, prefix, kind in _rules(net, config):
    m = re.fullmatch(pattern, module)
    if m and leaf in _KINDS[kind]:
      prefix = prefix(m) if callable(prefix) else m.expand(prefix)
      suffix, fn = _KINDS[kind][leaf]
      return f'{prefix}.{suffix}', fn
  raise ConversionError(f'{net}: no published name for mipae_jax parameter '
                        f'{"/".join(jax_path)} (arch={config.model.arch!r}).')


# ------------------------------------------------------------------- Templates.


def _templates(config) -> dict[str, tuple[dict, dict]]:
  """Abstract (params, batch_stats) of every network for `config`."""
  m = build_models(config.model, config.data)
  s, c = config.data.image_size, config.data.channels
  x = jax.ShapeDtypeStruct((1, s, s, c), jnp.float32)
  z_p = jax.ShapeDtypeStruct((1, config.model.pose_dim), jnp.float32)
  key = jax.random.key(0)

  def decoder_init():
    zc, skips = m['content_encoder'].apply(
        m['content_encoder'].init(key, jnp.zeros(x.shape), train=False),
        jnp.zeros(x.shape), train=False)
    return m['decoder'].init(key, zc, jnp.zeros(z_p.shape),
                             skips if uses_skips(config.model) else None, train=False)

  lstm_in = jnp.zeros((1, config.model.pose_dim + config.model.content_dim))
  inits = {
      'content_encoder': lambda: m['content_encoder'].init(key, jnp.zeros(x.shape), train=False),
      'pose_encoder': lambda: m['pose_encoder'].init(key, jnp.zeros(x.shape), train=False),
      'decoder': decoder_init,
      'critic': lambda: m['critic'].init(key, jnp.zeros(z_p.shape), jnp.zeros(z_p.shape)),
      'lstm': lambda: m['lstm'].init(key, m['lstm'].initial_carry(1), lstm_in),
  }
  out = {}
  for net, init in inits.items():
    v = jax.eval_shape(init)
    out[net] = (v['params'], v.get('batch_stats', {}))
  return out


# ------------------------------------------------------------------ Conversion.


def _as_numpy(v) -> np.ndarray:
  if hasattr(v, 'detach'):  # A torch tensor; avoid importing torch here.
    v = v.detach().cpu().numpy()
  return np.asarray(v)


def _strip_module_prefix(sd: Mapping) -> Mapping:
  """State dicts saved from `nn.DataParallel` prefix every key with `module.`."""
  if sd and all(k.startswith('module.') for k in sd):
    return {k[len('module.'):]: v for k, v in sd.items()}
  return sd


def folded_bias_key(net: str, bn_path: tuple[str, ...], config, params_template) -> str | None:
  """The published key of the convolution bias folded into BatchNorm `bn_path`'s running
  mean, or None where the convolution before it keeps its bias (or there is none).

  The convolution that feeds BatchNorm `.../xbn` is `.../xconv` (`c1/bn` <- `c1/conv`,
  `bn_out` <- `conv_out`, `downsample_bn` <- `downsample_conv`).
  """
  conv_path = bn_path[:-1] + (bn_path[-1].replace('bn', 'conv'),)
  module = params_template
  for name in conv_path:
    if name not in module:
      return None
    module = module[name]
  if 'kernel' not in module or 'bias' in module:
    return None
  return torch_key(net, conv_path + ('bias',), config)[0]


def _fold_conv_biases(net, stats, params_template, sd, config, used):
  """`stats` with each bias-free convolution's published bias folded into the running
  mean of the BatchNorm after it (module docstring)."""
  flat = traverse_util.flatten_dict(stats)
  for path in list(flat):
    if path[-1] != 'mean':
      continue
    key = folded_bias_key(net, path[:-1], config, params_template)
    if key is None or key not in sd:  # A checkpoint saved without that bias: nothing to fold.
      continue
    bias = _as_numpy(sd[key]).astype(np.float32)
    if bias.shape != tuple(flat[path].shape):
      raise ConversionError(f'{net}: {key!r} has shape {bias.shape}, expected '
                            f'{tuple(flat[path].shape)} (the channels of the BatchNorm after it).')
    flat[path] = flat[path] - jnp.asarray(bias)
    used.add(key)
  return traverse_util.unflatten_dict(flat)


def _convert_tree(net, template, sd, config, used):
  flat = traverse_util.flatten_dict(template)
  out = {}
  for path, leaf in flat.items():
    key, fn = torch_key(net, path, config)
    if key not in sd:
      raise ConversionError(f'{net}: missing key {key!r} (for mipae_jax {"/".join(path)}). '
                            f'Check config.model (arch, nf, dims, skips) and config.data '
                            f'(image_size, channels) against the checkpoint.')
    value = _as_numpy(sd[key]).astype(np.float32)
    if fn is not None:
      value = fn(value)
    if value.shape != tuple(leaf.shape):
      raise ConversionError(
          f'{net}: {key!r} has shape {tuple(_as_numpy(sd[key]).shape)}, which converts to '
          f'{value.shape}, but mipae_jax {"/".join(path)} expects {tuple(leaf.shape)}. '
          f'Check config.model (nf, content_dim, pose_dim, skips, critic_width, lstm_hidden) '
          f'and config.data.channels.')
    used.add(key)
    out[path] = jnp.asarray(np.ascontiguousarray(value))
  return traverse_util.unflatten_dict(out)


def from_torch_state_dict(state_dicts: Mapping[str, Mapping], config) -> tuple[dict, dict]:
  """Converts published PyTorch state_dicts into mipae_jax (params, batch_stats).

  Args:
    state_dicts: `{network name: state_dict}` for any subset of the networks; names as in
      the published checkpoint (`content_encoder`, `position_encoder`, `decoder`,
      `discriminator`, `lstm`) or mipae_jax's (`pose_encoder`, `critic`). Values are torch
      tensors or arrays. Other entries of a checkpoint (optimiser states) must be left out;
      `load_torch_checkpoint` does that.
    config: the mipae_jax run config the weights are for (`config.model`, `config.data`).
  Returns:
    (params, batch_stats): `params[net]` for every network given, `batch_stats[net]` for
    the given ones among content_encoder, pose_encoder, decoder.
  Raises:
    ConversionError: unknown network name, missing or unexpected keys, shape mismatch.
  """
  templates = _templates(config)
  params, stats = {}, {}
  for name, sd in state_dicts.items():
    net = ALIASES.get(name, name)
    if net not in NETWORKS:
      raise ConversionError(f'unknown network {name!r}; expected some of '
                            f'{NETWORKS + tuple(ALIASES)}.')
    if net in params:
      raise ConversionError(f'network {net!r} given twice (as {name!r} and an alias).')
    sd = _strip_module_prefix(sd)
    if net == 'lstm':
      _check_lstm_variant(sd, config)
    used: set[str] = set()
    p_template, s_template = templates[net]
    params[net] = _convert_tree(net, p_template, sd, config, used)
    if net in _BN_STATS:
      stats[net] = _fold_conv_biases(net, _convert_tree(net, s_template, sd, config, used),
                                     p_template, sd, config, used)
    unexpected = sorted(k for k in sd if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if unexpected:
      more = f' (+{len(unexpected) - 8} more)' if len(unexpected) > 8 else ''
      raise ConversionError(
          f'{name}: unexpected keys {unexpected[:8]}{more}: the checkpoint has layers the '
          f'configured network lacks (arch={config.model.arch!r}, skips='
          f'{config.model.skips!r}, image_size={config.data.image_size}).')
  return params, stats


# Top-level entries a published checkpoint may count its training iterations under.
STEP_KEYS = ('global_itr', 'itr', 'iteration', 'global_step', 'step')
# Lines of torch's load errors that advise loading with weights_only=False, which would run
# the file's code: a file from someone else must never be loaded that way, so they are
# dropped from every message passed on.
_UNSAFE_ADVICE = re.compile(r'weights[ _]only|trusted source|file an issue|'
                            r'documentation of torch\.load', re.IGNORECASE)


def _import_torch():
  try:
    import torch
  except ImportError as e:
    raise ImportError('load_torch_checkpoint needs PyTorch to read .pth files: '
                      "pip install 'mipae_jax[bench]' (torch==2.13.0) or any torch>=2.0.") from e
  return torch


def _load_failure(error: BaseException) -> str:
  """`Type: detail` of why torch could not load a file, without its advice to load with
  weights_only=False (e.g. `UnpicklingError: Trying to load unsupported GLOBAL
  posix.system whose module posix is blocked.`)."""
  kept = [line for line in str(error).splitlines() if not _UNSAFE_ADVICE.search(line)]
  detail = errors.first_line('\n'.join(kept), 160).rstrip('.')
  if not detail and isinstance(error, EOFError):
    detail = 'the file ends early (a truncated download?)'
  return f'{type(error).__name__}: {detail}' if detail else type(error).__name__


def read_torch_checkpoint(path: str) -> Mapping:
  """The unpickled checkpoint (`.pth`) at `path`: a dict of state_dicts, optimiser states
  and counters.

  Loads with `torch.load(..., weights_only=True)`: only tensors and plain containers are
  unpickled, so a checkpoint from someone else cannot run code. A file that cannot be
  loaded that way (random bytes, a pickle of other objects, a truncated download) is
  refused; the message never advises loading it otherwise.

  Raises:
    DataNotFoundError: there is no file at `path`.
    ConversionError: `path` is a directory, an empty file, not loadable with
      weights_only=True, or holds something other than a dict.
  """
  if not os.path.exists(path):
    raise errors.DataNotFoundError(
        f'checkpoint {path} not found (looked from {os.getcwd()}): pass the published '
        '.pth file.')
  if os.path.isdir(path):
    raise ConversionError(f'checkpoint {path} is a directory: pass the published .pth file.')
  if os.path.getsize(path) == 0:
    raise ConversionError(f'checkpoint {path} is empty (0 bytes), not a PyTorch checkpoint: '
                          'download it again.')
  torch = _import_torch()
  try:
    with warnings.catch_warnings():
      # A pickle protocol it does not expect makes torch warn on stderr before it fails.
      warnings.filterwarnings('ignore', category=UserWarning, module='torch')
      ckpt = torch.load(path, map_location='cpu', weights_only=True)
  except OSError as e:
    raise ConversionError(f'checkpoint {path} cannot be read: {e.strerror or e}.') from None
  except Exception as e:  # noqa: BLE001 - random bytes raise anything from KeyError up.
    # `from None`: torch's own message (shown by --verbose) advises weights_only=False.
    raise ConversionError(
        f'{path} is not a PyTorch checkpoint this loader can read safely '
        f'({_load_failure(e)}). Only tensors and plain containers are unpickled, so no code '
        'in a file runs: pass the published .pth file as downloaded.') from None
  if not isinstance(ckpt, Mapping):
    raise ConversionError(f'{path}: expected a dict checkpoint, found {type(ckpt).__name__}.')
  return ckpt


def published_step(ckpt: Mapping) -> tuple[int, str] | None:
  """(the training iterations a published checkpoint counts, the key it is under, one of
  `STEP_KEYS`), or None if it holds no such counter."""
  for key in STEP_KEYS:
    value = ckpt.get(key)
    if value is None or isinstance(value, bool):
      continue
    try:
      step = int(value)  # A Python int or a one-element tensor.
    except (TypeError, ValueError, RuntimeError):
      continue
    if step >= 0:
      return step, key
  return None


def network_state_dicts(ckpt: Mapping, path: str = '<checkpoint>', config=None
                        ) -> dict[str, dict[str, np.ndarray]]:
  """The network state_dicts of an unpickled checkpoint (`read_torch_checkpoint`), as
  numpy arrays; see `load_torch_checkpoint`."""
  torch = _import_torch()

  def is_state_dict(v):
    return isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values())

  if is_state_dict(ckpt):
    return {'': {k: _as_numpy(v) for k, v in ckpt.items()}}
  if config is not None:
    for name in ('opt', 'args', 'options', 'config'):
      if isinstance(ckpt.get(name), Mapping):
        check_published_options(ckpt[name], config)
  nets = {name: {k: _as_numpy(t) for k, t in sd.items()}
          for name, sd in ckpt.items() if is_state_dict(sd)
          and ALIASES.get(name, name) in NETWORKS}
  if not nets:
    raise ConversionError(f'{path}: no network state_dict found (top-level keys: '
                          f'{sorted(map(str, ckpt))}).')
  return nets


def load_torch_checkpoint(path: str, config=None) -> dict[str, dict[str, np.ndarray]]:
  """The network state_dicts of a published checkpoint (`.pth`), as numpy arrays.

  Loads safely (`read_torch_checkpoint`: weights_only=True, no code in the file runs).
  Entries that are not a network state_dict (optimiser states, `global_itr`) are dropped.
  A bare state_dict (of one network) is returned as `{'': state_dict}`. With `config`, a
  top-level dict of the run's flags (`opt`, `args`, `options`, `config`), where the
  checkpoint has one, is checked against it (`check_published_options`).

  Raises:
    DataNotFoundError: no file at `path`.
    ConversionError: a file that is not a PyTorch checkpoint loadable with
      weights_only=True (named, with torch's reason), no network in it, or flags that do
      not fit `config`.
  """
  return network_state_dicts(read_torch_checkpoint(path), path, config)


# ------------------------------------------------------------- Run directories.

AE_NETWORKS = ('content_encoder', 'pose_encoder', 'decoder', 'critic')


def _new_directory(out: str) -> str:
  """`out` as an absolute path; WorkdirError unless it is absent or an empty directory."""
  if not out or not str(out).strip():
    raise errors.WorkdirError('--out is empty: pass a new directory for the run, e.g. '
                              '--out=runs/published')
  path = os.path.abspath(os.path.expanduser(os.fspath(out)))
  if os.path.exists(path) and not os.path.isdir(path):
    raise errors.WorkdirError(f'{path} is a file: pass a new directory as --out.')
  if os.path.isdir(path) and os.listdir(path):
    shown = sorted(os.listdir(path))
    more = f' (+{len(shown) - 5} more)' if len(shown) > 5 else ''
    raise errors.WorkdirError(
        f'{path} is not empty (it holds {", ".join(shown[:5])}{more}): the converted run '
        'would mix with what is there. Pass a new or empty directory as --out.')
  return path


def _published_networks(path: str, config) -> tuple[dict, tuple[int, str] | None]:
  """The network state_dicts (mipae_jax names) of the checkpoint at `path` and its
  (step, counter key) or None."""
  ckpt = read_torch_checkpoint(path)
  nets = {ALIASES.get(name, name): sd
          for name, sd in network_state_dicts(ckpt, path, config).items()}
  return nets, published_step(ckpt)


def _select(nets: dict, wanted: tuple[str, ...], path: str) -> dict:
  """`nets` restricted to `wanted`; ConversionError naming those missing."""
  missing = [net for net in wanted if net not in nets]
  if missing:
    published = {v: k for k, v in ALIASES.items()}
    names = lambda ns: ', '.join(published.get(n, n) for n in ns)
    raise ConversionError(
        f'{path} holds no {names(missing)} state_dict (it has: '
        f'{", ".join(sorted(map(repr, nets)))}): pass the published checkpoint of a run '
        f'that saves {names(wanted)}.')
  return {net: nets[net] for net in wanted}


def _like(new, template):
  """`new` with each leaf in its `template` leaf's dtype (ValueError if the trees differ)."""
  return jax.tree.map(lambda n, t: jnp.asarray(n, t.dtype), new, template)


def autoencoder_state(config, params: dict, batch_stats: dict, step: int):
  """A `train.AEState` holding converted weights: fresh optimiser states (Adam moments 0,
  their step counts 0, as `create_train_state` makes them) with `params` (the four
  autoencoder networks') and `batch_stats` put in, at `step`."""
  fresh = train.create_train_state(config, jax.random.key(0))  # Every random value replaced.
  model = {net: params[net] for net in AE_NETWORKS if net != 'critic'}
  return fresh.replace(
      step=jnp.asarray(step, jnp.int32),
      model=fresh.model.replace(params=_like(model, fresh.model.params)),
      critic=fresh.critic.replace(params=_like(params['critic'], fresh.critic.params)),
      batch_stats=_like(batch_stats, fresh.batch_stats))


def lstm_state(config, params: dict, step: int):
  """A `train.LSTMState` holding the converted `params` (its `lstm` network's), with a
  fresh optimiser state, at `step`."""
  fresh = train.create_lstm_state(config, jax.random.key(0))
  return fresh.replace(step=jnp.asarray(step, jnp.int32),
                       lstm=fresh.lstm.replace(params=_like(params, fresh.lstm.params)))


def _save(workdir: str, stage: str, step: int, state, config, metadata: dict) -> None:
  store = CheckpointStore(workdir, stage, keep=config.train.keep_checkpoints)
  try:
    store.save(step, state, metadata={'metrics': {}, **metadata})
  finally:
    store.close()


def write_run_directory(config, out: str, checkpoint: str,
                        lstm_checkpoint: str | None = None) -> dict:
  """Converts published checkpoints into a new run directory that `mipae-evaluate`
  (`evaluate.evaluate_workdir`) and `mipae-train` read as one they trained.

  `out` receives the config record (`config.json`), the autoencoder checkpoint
  (`checkpoints/ae/<step>`, see `autoencoder_state`) and, with an LSTM, its checkpoint
  (`checkpoints/lstm/<step>`) recording that it was trained on this autoencoder. A stage's
  step is the iteration counter of its published file (`global_itr`, or another of
  `STEP_KEYS`) where it has one, else `config.train.ae_steps` (`lstm_steps`): a run at the
  end of its training. Everything is written to a temporary sibling of `out`, renamed to
  `out` once complete, so a failed conversion leaves no half run directory.

  Args:
    config: the config the weights were trained with (`config.model`, `config.data`).
    out: the run directory to create: absent or an empty directory.
    checkpoint: the published autoencoder `.pth` (content_encoder, position_encoder,
      decoder, discriminator); an `lstm` in it is converted too unless `lstm_checkpoint`.
    lstm_checkpoint: the published pose-LSTM `.pth` (its own run's file), or None.
  Returns:
    `{'out': absolute path, 'ae': {'file', 'step', 'step_from'}, 'lstm': the same or
    None}`; `step_from` is the counter's key or the config field the step came from.
  Raises:
    WorkdirError: `out` is a file or a non-empty directory.
    DataNotFoundError: a checkpoint file does not exist.
    ConversionError: a file is not a checkpoint this loader reads safely, lacks a network,
      or its weights do not fit `config` (names and shapes).
    ConfigError: `config` itself is invalid.
  """
  configuration.validate(config, num_devices=1)  # As mipae-evaluate will.
  out = _new_directory(out)
  nets, counted = _published_networks(checkpoint, config)
  params, stats = from_torch_state_dict(_select(nets, AE_NETWORKS, checkpoint), config)
  ae = _stage_record(checkpoint, counted, 'train.ae_steps', config.train.ae_steps)
  ae_state = autoencoder_state(config, params, stats, ae['step'])
  lstm = lstm_converted = None
  if lstm_checkpoint is not None:
    nets, counted = _published_networks(lstm_checkpoint, config)
  if lstm_checkpoint is not None or 'lstm' in nets:
    source = lstm_checkpoint or checkpoint
    lstm = _stage_record(source, counted, 'train.lstm_steps', config.train.lstm_steps)
    params = from_torch_state_dict(_select(nets, ('lstm',), source), config)[0]['lstm']
    lstm_converted = lstm_state(config, params, lstm['step'])
  tmp = os.path.join(os.path.dirname(out), f'.{os.path.basename(out)}.converting-{os.getpid()}')
  try:
    config_record.record_config(tmp, config)
    _save(tmp, 'ae', ae['step'], ae_state, config, {'converted_from': ae['file']})
    if lstm is not None:
      _save(tmp, 'lstm', lstm['step'], lstm_converted, config,
            {'converted_from': lstm['file'], 'trained_on': autoencoder_record(ae_state)})
    os.replace(tmp, out)  # Replaces an empty directory too (POSIX rename).
  except OSError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    raise errors.WorkdirError(f'{out} cannot be written: {e.strerror or e}. Pass an --out '
                              'in a writable place with free space.') from e
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {'out': out, 'ae': ae, 'lstm': lstm}


def _stage_record(path: str, counted, field: str, default: int) -> dict:
  """{'file', 'step', 'step_from'}: the published counter where there is one, else
  `config.<field>` (the end of a run's training)."""
  if counted is None:
    return {'file': os.path.abspath(path), 'step': int(default), 'step_from': f'config.{field}'}
  return {'file': os.path.abspath(path), 'step': counted[0], 'step_from': counted[1]}
