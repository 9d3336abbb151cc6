"""Parity with the PyTorch reference: published-layout weights -> mipae_jax, same outputs.

Every network is built in PyTorch (`benchmarks/torch_reference.py`, published state_dict
key names), given random weights and BatchNorm statistics, converted with
`mipae_jax.convert.from_torch_state_dict` and run on the same inputs in both frameworks,
in inference mode and in training mode (batch statistics). Narrow networks keep it fast.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    'torch', reason='PyTorch is not installed (pip install -e .[bench] pins torch==2.13.0); '
    'the conversion parity test needs it.')

from benchmarks import torch_reference as ref  # noqa: E402
from experiments.configs import default  # noqa: E402
from mipae_jax import convert, errors, models  # noqa: E402

TOL = 1e-4
B = 4


def small_config(arch='dcgan', skips=False):
  c = default.get_config()
  c.model.arch = arch
  c.model.nf = 8
  c.model.content_dim = 16
  c.model.pose_dim = 10 if arch == 'vgg' else 5
  c.model.skips = skips
  c.model.critic_width = 32
  c.model.lstm_hidden = 16
  return c


def randomise(net, seed):
  """Random weights and BN statistics, so a swapped or untransposed tensor shows."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in net.state_dict().items():
      if name.endswith('num_batches_tracked'):
        continue
      if name.endswith('running_var'):
        t.copy_(0.5 + torch.rand(t.shape, generator=g))
      elif name.endswith(('running_mean', 'bias')):
        t.copy_(0.1 * torch.randn(t.shape, generator=g))
      elif t.ndim == 1:  # BN scale.
        t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=g))
      else:
        fan_in = t[0].numel() if t.ndim > 1 else 1
        t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
  return net


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def close(a, b, what):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (what, a.shape, b.shape)
  err = float(np.max(np.abs(a - b)))
  assert err <= TOL, f'{what}: max abs difference {err:.2e} > {TOL}'


def torch_bn_stats(net):
  return {k: v.numpy().copy() for k, v in net.state_dict().items()
          if k.endswith(('running_mean', 'running_var'))}


def check_running_stats(net_t, stats_jax_new, params_jax, net_name, config):
  """Train-mode running statistics equal torch's, the variance included (both update it
  with the unbiased batch variance); a running mean after a bias-free convolution equals
  torch's minus the published bias folded into it."""
  after = torch_bn_stats(net_t)
  sd = net_t.state_dict()
  flat = jax.tree_util.tree_flatten_with_path(stats_jax_new)[0]
  mapped = folded = 0
  for path, value in flat:
    names = tuple(p.key for p in path)
    key, _ = convert.torch_key(net_name, names, config)
    want = after[key]
    bias_key = convert.folded_bias_key(net_name, names[:-1], config, params_jax)
    if names[-1] == 'mean' and bias_key is not None:
      want = want - sd[bias_key].numpy()
      folded += 1
    close(value, want, f'{net_name} running {names[-1]} {key}')
    mapped += 1
  assert mapped == len(after)
  assert folded == mapped // 2  # Every BatchNorm here follows a bias-free convolution.


@pytest.mark.parametrize('arch,skips', [('dcgan', False), ('dcgan', True), ('vgg', True)])
def test_autoencoder_parity(arch, skips):
  config = small_config(arch, skips)
  nets_t = ref.build(config)
  for i, net in enumerate(nets_t.values()):
    randomise(net, i)
  sds = {'content_encoder': nets_t['content_encoder'].state_dict(),
         'position_encoder': nets_t['pose_encoder'].state_dict(),
         'decoder': nets_t['decoder'].state_dict(),
         'discriminator': nets_t['critic'].state_dict()}
  params, stats = convert.from_torch_state_dict(sds, config)
  m = models.build_models(config.model, config.data)
  rng = np.random.default_rng(0)
  x = rng.random((B, 64, 64, 3), dtype=np.float32)
  use_skips = models.uses_skips(config.model)

  for train in (False, True):
    for net in nets_t.values():
      net.train(train)
    mutable = ['batch_stats'] if train else False

    def apply(net, *args, train=train, mutable=mutable):
      v = {'params': params[net]}
      if net in stats:
        v['batch_stats'] = stats[net]
      kw = {'train': train, 'mutable': mutable} if net in stats else {}
      out = m[net].apply(v, *args, **kw)
      return out if train and net in stats else (out, None)

    with torch.no_grad():
      zc_t, skips_t = nets_t['content_encoder'](nchw(x))
      zp_t = nets_t['pose_encoder'](nchw(x))
      y_t = nets_t['decoder'](zc_t, zp_t, skips_t if use_skips else None)
      a_t = torch.from_numpy(rng.standard_normal((B, config.model.pose_dim), np.float32))
      t_t = nets_t['critic'](zp_t, a_t)
    (zc_j, skips_j), upd_c = apply('content_encoder', jnp.asarray(x))
    zp_j, upd_p = apply('pose_encoder', jnp.asarray(x))
    y_j, upd_d = apply('decoder', zc_j, zp_j, skips_j if use_skips else None)
    t_j, _ = apply('critic', zp_j, jnp.asarray(a_t.numpy()))
    mode = 'train' if train else 'eval'
    close(zc_j, zc_t, f'{arch} content z ({mode})')
    for i, (s_j, s_t) in enumerate(zip(skips_j, skips_t, strict=True)):
      close(s_j, nhwc(s_t), f'{arch} content skip {i} ({mode})')
    close(zp_j, zp_t, f'{arch} pose z ({mode})')
    close(y_j, nhwc(y_t), f'{arch} decoder ({mode})')
    close(t_j, t_t, f'{arch} critic ({mode})')
    if train:
      for net, upd in (('content_encoder', upd_c), ('pose_encoder', upd_p),
                       ('decoder', upd_d)):
        check_running_stats(nets_t[net], upd['batch_stats'], params[net], net, config)


def test_lstm_parity():
  config = small_config()
  lstm_t = randomise(ref.build(config)['lstm'], 7)
  params, stats = convert.from_torch_state_dict({'lstm': lstm_t.state_dict()}, config)
  assert stats == {}
  lstm_j = models.build_models(config.model, config.data)['lstm']
  rng = np.random.default_rng(1)
  xs = rng.standard_normal((6, B, 21), np.float32)
  hidden_t = lstm_t.init_hidden(B)
  carry_j = lstm_j.initial_carry(B)
  step = jax.jit(lambda c, x: lstm_j.apply({'params': params['lstm']}, c, x))
  for t in range(xs.shape[0]):
    with torch.no_grad():
      out_t, hidden_t = lstm_t(torch.from_numpy(xs[t]), hidden_t)
    carry_j, out_j = step(carry_j, jnp.asarray(xs[t]))
    close(out_j, out_t, f'lstm output step {t}')
    for layer, ((h_t, c_t), (c_j, h_j)) in enumerate(zip(hidden_t, carry_j, strict=True)):
      close(h_j, h_t, f'lstm h layer {layer} step {t}')
      close(c_j, c_t, f'lstm c layer {layer} step {t}')


def test_conversion_errors():
  config = small_config()
  sd = ref.build(config)['pose_encoder'].state_dict()
  missing = {k: v for k, v in sd.items() if k != 'main.4.weight'}
  with pytest.raises(convert.ConversionError, match=r"missing key 'main.4.weight'"):
    convert.from_torch_state_dict({'position_encoder': missing}, config)
  extra = {**sd, 'main.9.weight': torch.zeros(3)}
  with pytest.raises(convert.ConversionError, match='unexpected keys'):
    convert.from_torch_state_dict({'position_encoder': extra}, config)
  wrong = {**sd, 'main.4.weight': torch.zeros(7, 64, 4, 4)}
  with pytest.raises(convert.ConversionError, match='shape'):
    convert.from_torch_state_dict({'position_encoder': wrong}, config)
  with pytest.raises(convert.ConversionError, match='unknown network'):
    convert.from_torch_state_dict({'generator': sd}, config)


def test_load_torch_checkpoint_published_layout(tmp_path):
  """A checkpoint shaped like the published one (networks, optimiser states, a counter),
  saved with DataParallel prefixes on one network, loads with weights_only=True."""
  config = small_config()
  nets = ref.build(config)
  opt = torch.optim.Adam(nets['critic'].parameters())
  nets['critic'](torch.zeros(2, 5), torch.zeros(2, 5)).sum().backward()
  opt.step()
  ckpt = {'global_itr': 3, 'content_encoder': nets['content_encoder'].state_dict(),
          'position_encoder': {f'module.{k}': v
                               for k, v in nets['pose_encoder'].state_dict().items()},
          'decoder': nets['decoder'].state_dict(),
          'discriminator': nets['critic'].state_dict(),
          'discriminator_optim': opt.state_dict()}
  path = os.path.join(tmp_path, 'run-3.pth')
  torch.save(ckpt, path)
  sds = convert.load_torch_checkpoint(path)
  assert sorted(sds) == ['content_encoder', 'decoder', 'discriminator', 'position_encoder']
  params, stats = convert.from_torch_state_dict(sds, config)
  assert sorted(params) == ['content_encoder', 'critic', 'decoder', 'pose_encoder']
  assert sorted(stats) == ['content_encoder', 'decoder', 'pose_encoder']
  np.testing.assert_array_equal(
      params['critic']['fc1']['kernel'], nets['critic'].main[0].weight.detach().numpy().T)


def test_normalize_pose_matches_the_published_normalize_position():
  """The published --normalize_position divides z_p by its L2 norm; without the option the
  converted encoder's codes are far from the published run's (about 0.25 on these)."""
  config = small_config()
  net_t = randomise(ref.build(config)['pose_encoder'], 3).eval()
  params, stats = convert.from_torch_state_dict({'position_encoder': net_t.state_dict()},
                                                config)
  x = np.random.default_rng(2).random((B, 64, 64, 3), dtype=np.float32)
  with torch.no_grad():
    published = torch.nn.functional.normalize(net_t(nchw(x)), dim=1).numpy()
  variables = {'params': params['pose_encoder'], 'batch_stats': stats['pose_encoder']}
  for normalize in (False, True):
    config.model.normalize_pose = normalize
    ep = models.build_models(config.model, config.data)['pose_encoder']
    z = np.asarray(ep.apply(variables, jnp.asarray(x), train=False))
    if normalize:
      close(z, published, 'normalised pose z')
      np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    else:
      assert np.max(np.abs(z - published)) > 0.05


def test_published_flags_and_lstm_variants_are_named(tmp_path):
  config = small_config()
  nets = ref.build(config)
  path = os.path.join(tmp_path, 'run.pth')
  torch.save({'position_encoder': nets['pose_encoder'].state_dict(),
              'opt': {'normalize_position': True, 'recon_loss_type': 'l1', 'batch_size': 100}},
             path)
  with pytest.raises(convert.ConversionError,
                     match=r'published --normalize_position=True: set '
                           r'config\.model\.normalize_pose=True'):
    convert.load_torch_checkpoint(path, config)
  config.model.normalize_pose = True
  with pytest.raises(convert.ConversionError, match=r"--recon_loss_type l1: set "
                                                    r"config\.loss\.recon='l1'"):
    convert.load_torch_checkpoint(path, config)
  config.loss.recon = 'l1'
  assert sorted(convert.load_torch_checkpoint(path, config)) == ['position_encoder']
  with pytest.raises(convert.ConversionError, match=r'published --content_lstm, a variant'):
    convert.check_published_options({'content_lstm': True}, config)
  convert.check_published_options({'content_lstm': False}, config)
  lstm = nets['lstm'].state_dict()
  gaussian = {**{k: v for k, v in lstm.items() if not k.startswith('output')},
              'mu_net.weight': torch.zeros(5, 16), 'logvar_net.weight': torch.zeros(5, 16)}
  with pytest.raises(convert.ConversionError, match=r'logvar_net and mu_net heads: it is the '
                                                    r'published Gaussian'):
    convert.from_torch_state_dict({'lstm': gaussian}, config)
  content = {**lstm, 'output.0.weight': torch.zeros(16, 16), 'output.0.bias': torch.zeros(16)}
  with pytest.raises(convert.ConversionError, match=r'predicts 16 values per step, not the 5 '
                                                    r'of a pose .*--content_lstm'):
    convert.from_torch_state_dict({'lstm': content}, config)


# ------------------------------------------------- Files the loader must refuse safely.


class _RunsAShellCommand:
  """Unpickling this calls `os.system(command)`: what a malicious .pth does."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def write_unloadable(kind: str, path: str, marker: str) -> None:
  """A file at `path` that must not load: `pickle*` ones would create `marker` if their
  code ran."""
  evil = {'content_encoder': _RunsAShellCommand(f'echo ran > {marker}')}
  if kind == 'random':
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with open(path, 'wb') as f:
      f.write(data)
  elif kind == 'text':
    with open(path, 'w') as f:
      f.write('not a checkpoint\n')
  elif kind == 'empty':
    open(path, 'wb').close()
  elif kind == 'pickle_zip':  # torch.save's format, as a real .pth.
    torch.save(evil, path)
  elif kind == 'pickle_raw':  # A plain pickle, torch's legacy format.
    import pickle
    with open(path, 'wb') as f:
      pickle.dump(evil, f)
  else:
    raise ValueError(kind)


UNLOADABLE = ('random', 'text', 'empty', 'pickle_zip', 'pickle_raw')


@pytest.mark.parametrize('kind', UNLOADABLE)
def test_unloadable_files_are_refused_naming_them_without_unsafe_advice(tmp_path, kind):
  """torch's own message advises weights_only=False, which would run the file's code: the
  refusal names the file and keeps only torch's reason; a pickle's code never runs."""
  path, marker = str(tmp_path / f'{kind}.pth'), str(tmp_path / 'ran')
  write_unloadable(kind, path, marker)
  with pytest.raises(convert.ConversionError) as e:
    convert.load_torch_checkpoint(path)
  message = str(e.value)
  assert path in message and '\n' not in message
  assert 'weights_only=False' not in message and 'weights_only' not in message
  # torch's own error, with its advice, is not chained on (a traceback would show it).
  assert e.value.__cause__ is None
  assert e.value.__context__ is None or e.value.__suppress_context__
  if kind == 'empty':
    assert 'is empty (0 bytes)' in message
  else:
    assert 'is not a PyTorch checkpoint this loader can read safely (' in message
  if kind == 'pickle_zip':
    assert 'posix.system' in message  # torch's reason: the blocked global.
  assert not os.path.exists(marker)


def test_a_missing_checkpoint_is_named(tmp_path):
  path = str(tmp_path / 'nope.pth')
  with pytest.raises(errors.DataNotFoundError, match=rf'checkpoint {path} not found'):
    convert.load_torch_checkpoint(path)
  with pytest.raises(convert.ConversionError, match=rf'checkpoint {tmp_path} is a directory'):
    convert.load_torch_checkpoint(str(tmp_path))


def test_the_published_iteration_counter_is_read():
  assert convert.published_step({'global_itr': 400}) == (400, 'global_itr')
  assert convert.published_step({'itr': torch.tensor(12)}) == (12, 'itr')
  assert convert.published_step({'lstm': {}, 'epoch': 3}) is None
