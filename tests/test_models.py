"""Module shapes, exact parameter counts and the custom layers against NumPy references."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mipae_jax import cpu_kernels, layers, models
from mipae_jax.configs import dsprites as dsprites_config
from mipae_jax.configs import mpi3d as mpi3d_config
from mipae_jax.configs import tiny


def n_params(module, *args, **kwargs):
  v = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  return sum(x.size for x in jax.tree_util.tree_leaves(v['params']))


def skip_shapes(encoder, x):
  out = jax.eval_shape(lambda: encoder.init_with_output(jax.random.key(0), x)[0][1])
  return [jnp.zeros(s.shape) for s in out]


# Trainable parameters of the published PyTorch networks at nc=3, 64x64, less the biases
# of the convolutions that feed a BatchNorm (mipae_jax has none; conversion folds them).
def test_parameter_counts_match_published_architecture():
  x = jnp.zeros((1, 64, 64, 3))
  zc, zp5, zp10 = jnp.zeros((1, 128)), jnp.zeros((1, 5)), jnp.zeros((1, 10))
  dcgan_down = 64 + 128 + 256 + 512
  assert n_params(models.ContentEncoder(dim=128), x) == 3_807_424 - dcgan_down - 128
  assert n_params(models.PoseEncoder(dim=5), x) == 2_799_439 - dcgan_down - 5
  dcgan_up = 512 + 256 + 128 + 64  # The last layer, into the sigmoid, keeps its bias.
  assert n_params(models.Decoder(channels=3), zc, zp5, None) == 3_848_003 - dcgan_up
  skips = skip_shapes(models.ContentEncoder(dim=128), x)
  assert (n_params(models.Decoder(channels=3, skips=True), zc, zp5, skips)
          == 6_603_587 - dcgan_up)
  assert n_params(models.Critic(), zp5, zp5) == 268_801
  vgg_down = 2 * 64 + 2 * 128 + 3 * 256 + 3 * 512 + 128
  assert n_params(models.VGGContentEncoder(dim=128), x) == 8_689_600 - vgg_down
  resnet = 64 + 4 * 64 + (5 * 128) + (5 * 256) + (5 * 512) + 10  # Downsample convs too.
  assert n_params(models.ResNetPoseEncoder(dim=10), x) == 11_222_814 - resnet
  vskips = skip_shapes(models.VGGContentEncoder(dim=128), x)
  vgg_up = 512 + (512 + 512 + 256) + (256 + 256 + 128) + (128 + 64) + 64
  assert n_params(models.VGGDecoder(channels=3), zc, zp10, vskips) == 11_904_579 - vgg_up
  # Two bias vectors per cell, as torch.nn.LSTMCell keeps them.
  lstm = models.PoseLSTM(pose_dim=5)
  assert n_params(lstm, lstm.initial_carry(1), jnp.zeros((1, 133))) == 1_088_261


@pytest.mark.parametrize('size', [16, 32])
def test_dcgan_shapes(size):
  b, nf = 2, 4
  n_blocks = models.dcgan_num_blocks(size)
  x = jax.random.uniform(jax.random.key(0), (b, size, size, 3))
  z_c, skips = run(models.ContentEncoder(dim=7, nf=nf), x)
  assert z_c.shape == (b, 7)
  assert [s.shape for s in skips] == [
      (b, size // 2 ** (i + 1), size // 2 ** (i + 1), nf * 2 ** i) for i in range(n_blocks)]
  assert np.all(np.abs(z_c) <= 1)
  z_p = run(models.PoseEncoder(dim=3, nf=nf), x)
  assert z_p.shape == (b, 3)
  for use_skips in (False, True):
    dec = models.Decoder(channels=3, image_size=size, nf=nf, skips=use_skips)
    y = run(dec, z_c, z_p, skips)
    assert y.shape == (b, size, size, 3)
    assert np.all((y > 0) & (y < 1))


def run(module, *args):
  """Initialises and applies `module` in inference mode, compiled once."""
  return jax.jit(lambda k, *a: module.init_with_output(k, *a, train=False)[0])(
      jax.random.key(1), *args)


def shapes(module, *args):
  return jax.eval_shape(lambda: module.init_with_output(jax.random.key(1), *args)[0])


def test_mpi3d_shapes():
  b, nf = 2, 2
  x = jnp.zeros((b, 64, 64, 3))
  z_c, skips = shapes(models.VGGContentEncoder(dim=6, nf=nf), x)
  assert z_c.shape == (b, 6)
  assert [s.shape[1:] for s in skips] == [(64, 64, nf), (32, 32, 2 * nf), (16, 16, 4 * nf),
                                          (8, 8, 8 * nf)]
  assert shapes(models.ResNetPoseEncoder(dim=4, nf=nf), x).shape == (b, 4)
  skips = [jnp.zeros(s.shape) for s in skips]
  y = shapes(models.VGGDecoder(channels=3, nf=nf), jnp.zeros((b, 6)), jnp.zeros((b, 4)), skips)
  assert y.shape == (b, 64, 64, 3)


def test_bad_image_size_is_rejected():
  with pytest.raises(ValueError, match='power of two'):
    models.dcgan_num_blocks(48)
  with pytest.raises(ValueError, match='64x64'):
    models.VGGContentEncoder(dim=4, nf=2).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_critic_and_lstm_shapes():
  a = jnp.ones((5, 3))
  t, _ = models.Critic(width=8).init_with_output(jax.random.key(0), a, a)
  assert t.shape == (5,)
  lstm = models.PoseLSTM(pose_dim=3, hidden=8, num_layers=2)
  (carry, y), _ = lstm.init_with_output(jax.random.key(0), lstm.initial_carry(5),
                                        jnp.ones((5, 7)))
  assert y.shape == (5, 3) and len(carry) == 2 and carry[0][0].shape == (5, 8)


# ------------------------------------------------------------ NumPy references.


def torch_conv_transpose_ref(x, w, stride, padding):
  """PyTorch ConvTranspose2d by its definition (scatter), NHWC input, w [kh, kw, in, out]."""
  b, h, wd, _ = x.shape
  kh, kw, _, cout = w.shape
  full = np.zeros((b, (h - 1) * stride + kh, (wd - 1) * stride + kw, cout))
  for i in range(h):
    for j in range(wd):
      full[:, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
          'bc,yxco->byxo', x[:, i, j], w)
  return full[:, padding:full.shape[1] - padding, padding:full.shape[2] - padding]


@pytest.mark.parametrize('layer,stride,padding,size', [
    (layers.UpConv4x4(5), 2, 1, 6),
    (layers.ConvTranspose3x3(5), 1, 1, 6),
    (layers.ProjectUp(5, 4), 1, 0, 1),
])
def test_transposed_convolutions_match_definition(layer, stride, padding, size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  arg = x[:, 0, 0] if isinstance(layer, layers.ProjectUp) else x
  params = layer.init(jax.random.key(0), arg)['params']
  w = rng.normal(size=params['kernel'].shape).astype(np.float32)
  bias = rng.normal(size=params['bias'].shape).astype(np.float32)
  y = layer.apply({'params': {'kernel': w, 'bias': bias}}, arg)
  ref = torch_conv_transpose_ref(x.astype(np.float64), w, stride, padding) + bias
  np.testing.assert_allclose(np.asarray(y), ref, atol=1e-4)


def test_lstm_cell_matches_torch_equations():
  rng = np.random.default_rng(1)
  hid, n_in, b = 4, 3, 2
  cell = layers.LSTMCell(hid)
  c0, h0 = rng.normal(size=(b, hid)), rng.normal(size=(b, hid))
  x = rng.normal(size=(b, n_in))
  params = cell.init(jax.random.key(0), (c0, h0), x)['params']
  params = jax.tree_util.tree_map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  (c, h), out = cell.apply({'params': params}, (c0, h0), x)
  g = (x @ params['input']['kernel'] + params['input']['bias']
       + h0 @ params['hidden']['kernel'] + params['hidden']['bias'])
  i, f, gg, o = np.split(g, 4, axis=1)
  sig = lambda v: 1 / (1 + np.exp(-v))
  c_ref = sig(f) * c0 + sig(i) * np.tanh(gg)
  h_ref = sig(o) * np.tanh(c_ref)
  np.testing.assert_allclose(c, c_ref, atol=1e-5)
  np.testing.assert_allclose(h, h_ref, atol=1e-5)
  np.testing.assert_allclose(out, h_ref, atol=1e-5)


def test_initialisation_follows_the_method_doc():
  params = models.Critic(width=512).init(jax.random.key(0), jnp.ones((1, 5)),
                                         jnp.ones((1, 5)))['params']
  w = np.asarray(params['fc2']['kernel'])
  assert abs(w.std() - 0.02) < 0.001 and abs(w.mean()) < 0.001
  assert np.all(np.asarray(params['fc2']['bias']) == 0)
  v = jax.jit(models.ContentEncoder(dim=128).init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  scale = np.asarray(v['params']['c4']['bn']['scale'])
  assert abs(scale.mean() - 1) < 0.005 and abs(scale.std() - 0.02) < 0.005


KERNEL_SETS = pytest.mark.parametrize('kn', [layers.XLA, cpu_kernels.CPU], ids=['xla', 'cpu'])


@pytest.mark.parametrize('fn,out_channels', [
    ('down', 5), ('up', 20), ('up', 3)])  # 'up' with 3: the matmul + overlap-add form.
def test_kernel_sets_agree_on_convolutions(fn, out_channels):
  """Values and both gradients of the 4x4 stride-2 layers: the CPU set's custom VJPs
  equal the XLA set, and the XLA set equals the operation's definition."""
  rng = np.random.default_rng(3)
  size, cin = (8, 4) if fn == 'down' else (4, 6)
  x = jnp.asarray(rng.normal(size=(2, size, size, cin)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(4, 4, cin, out_channels)), jnp.float32)
  dims = ('NHWC', 'HWIO', 'NHWC')
  if fn == 'down':
    cpu, xla = cpu_kernels.CPU.conv4x4_down, layers.XLA.conv4x4_down
    ref = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),
                                                    dimension_numbers=dims)
  else:
    cpu, xla = cpu_kernels.CPU.conv_transpose4x4_up, layers.XLA.conv_transpose4x4_up
    # The transposed convolution by definition: every input pixel adds its 4x4 patch
    # x[i, j] * k at output (2i - 1, 2j - 1) (PyTorch's padding 1 crops one on each side).
    xs, ks = np.asarray(x, np.float64), np.asarray(k, np.float64)
    full = np.zeros((2, 2 * size + 2, 2 * size + 2, out_channels))
    for i in range(size):
      for j in range(size):
        full[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4] += np.einsum('bc,yxco->byxo', xs[:, i, j], ks)
    np.testing.assert_allclose(xla(x, k), full[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-4)
    ref = xla
  probe = jnp.asarray(rng.normal(size=ref(x, k).shape), jnp.float32)
  loss = lambda f: (lambda x, k: jnp.sum(jnp.sin(f(x, k)) * probe))
  want = jax.grad(loss(ref), argnums=(0, 1))(x, k)
  for ours in (cpu, xla):
    np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=1e-5, atol=1e-4)
    got = jax.grad(loss(ours), argnums=(0, 1))(x, k)
    for g, w in zip(got, want, strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('arch', ['dcgan', 'vgg'])
def test_kernel_sets_share_parameters_and_outputs(arch):
  """A network built with either kernel set has the same parameter tree, so a checkpoint
  moves between backends, and computes the same training-mode forward pass, batch
  statistics and gradients from the same parameters."""
  cfg = dsprites_config.get_config() if arch == 'dcgan' else mpi3d_config.get_config()
  cfg.model.nf = 4
  x = jax.random.uniform(jax.random.key(0), (4, 64, 64, cfg.data.channels))
  out = {}
  for choice in ('xla', 'cpu'):
    cfg.model.kernels = choice
    nets = models.build_models(cfg.model, cfg.data)
    ec, dec = nets['content_encoder'], nets['decoder']
    # Jitted: one compiled program per network and kernel set, not one per operation.
    v = jax.jit(ec.init)(jax.random.key(1), x)
    vd = jax.jit(dec.init)(jax.random.key(2), jnp.zeros((4, cfg.model.content_dim)),
                           jnp.zeros((4, cfg.model.pose_dim)),
                           jax.jit(functools.partial(ec.apply, train=False))(v, x)[1])

    def loss(p, pd, v=v, vd=vd, ec=ec, dec=dec):
      (z, skips), s = ec.apply({**v, 'params': p}, x, mutable=['batch_stats'])
      r, sd = dec.apply({**vd, 'params': pd}, z, jnp.ones((4, cfg.model.pose_dim)) * 0.1,
                        skips if models.uses_skips(cfg.model) else None,
                        mutable=['batch_stats'])
      return jnp.mean((r - x) ** 2), (z, s, sd)

    (value, aux), g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        v['params'], vd['params'])
    out[choice] = (v, vd, value, aux, g)
  (v0, vd0, l0, a0, g0), (v1, vd1, l1, a1, g1) = out['xla'], out['cpu']
  assert jax.tree.structure((v0, vd0)) == jax.tree.structure((v1, vd1))
  for a, b in zip(jax.tree.leaves((v0, vd0)), jax.tree.leaves((v1, vd1)), strict=True):
    np.testing.assert_array_equal(a, b)  # Same init: the kernels draw nothing.
  np.testing.assert_allclose(l0, l1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves((a0, g0)), jax.tree.leaves((a1, g1)), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


def test_auto_kernels_are_the_cpu_set_on_cpu_only():
  assert models.kernels_for('auto', 'cpu') is cpu_kernels.CPU
  assert models.kernels_for('auto', 'gpu') is layers.XLA
  assert models.kernels_for('auto', 'tpu') is layers.XLA
  assert models.kernels_for('xla', 'cpu') is layers.XLA
  assert models.kernels_for('cpu', 'gpu') is cpu_kernels.CPU
  with pytest.raises(ValueError, match="model.kernels must be one of"):
    models.kernels_for('cudnn')


@KERNEL_SETS
def test_batch_norm_matches_numpy_reference(kn):
  """Train-mode output, all three gradients and the PyTorch-style running statistics."""
  rng = np.random.default_rng(4)
  x = rng.normal(0.5, 2.0, size=(6, 5, 5, 7))
  scale, bias = rng.normal(1.0, 0.1, size=7), rng.normal(0.0, 0.1, size=7)
  probe = rng.normal(size=x.shape)
  bn = layers.BatchNorm(use_running_average=False, kernels=kn)
  stats = {'mean': np.full(7, 0.3, np.float32), 'var': np.full(7, 2.0, np.float32)}

  def loss(x, scale, bias):
    y, upd = bn.apply({'params': {'scale': scale, 'bias': bias}, 'batch_stats': stats},
                      x, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y) * probe), (y, upd['batch_stats'])

  f32 = lambda a: jnp.asarray(a, jnp.float32)
  (_, (y, new_stats)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
      f32(x), f32(scale), f32(bias))

  xs = x.reshape(-1, 7)
  n, mu, var = len(xs), xs.mean(0), xs.var(0)
  xhat = (xs - mu) / np.sqrt(var + 1e-5)
  y_ref = xhat * scale + bias
  g = np.cos(y_ref) * probe.reshape(-1, 7)
  d_bias, d_scale = g.sum(0), (g * xhat).sum(0)
  d_x = scale / np.sqrt(var + 1e-5) * (g - d_bias / n - xhat * d_scale / n)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 7), y_ref, rtol=1e-4, atol=1e-4)
  for got, want in zip(grads, (d_x.reshape(x.shape), d_scale, d_bias), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # PyTorch: running_var moves towards the unbiased variance, momentum 0.1.
  np.testing.assert_allclose(new_stats['mean'], 0.9 * 0.3 + 0.1 * mu, rtol=1e-5)
  np.testing.assert_allclose(new_stats['var'], 0.9 * 2.0 + 0.1 * var * n / (n - 1), rtol=1e-5)


@KERNEL_SETS
@pytest.mark.parametrize('ratio', [3, 10, 100])
def test_batch_norm_float32_precision_at_large_mean(ratio, kn):
  """Inputs with |mean| = ratio x std keep float32 precision, forward and backward.

  The one-pass E[x^2] - E[x]^2 statistics were 9e-5 (ratio 3), 1.2e-3 (10) and 8e-2
  (100) from float64 here; PyTorch's two-pass ones are ~1e-5 at any ratio.
  """
  rng = np.random.default_rng(ratio)
  x = (ratio + rng.standard_normal((64, 8, 8, 16))).astype(np.float32)
  g = rng.standard_normal(x.shape).astype(np.float32)
  scale = (1 + 0.1 * rng.standard_normal(16)).astype(np.float32)
  bias = (0.1 * rng.standard_normal(16)).astype(np.float32)
  f = lambda x: kn.batch_norm_train(x, scale, bias, 1e-5, None)[0]
  y, vjp = jax.vjp(f, jnp.asarray(x))
  dx = vjp(jnp.asarray(g))[0]

  xs, gs = x.astype(np.float64).reshape(-1, 16), g.astype(np.float64).reshape(-1, 16)
  mu, var = xs.mean(0), xs.var(0)
  xhat = (xs - mu) / np.sqrt(var + 1e-5)
  y_ref = xhat * scale + bias
  dx_ref = scale / np.sqrt(var + 1e-5) * (gs - gs.mean(0) - xhat * (gs * xhat).mean(0))
  assert np.abs(np.asarray(y).reshape(-1, 16) - y_ref).max() < 1.5e-5
  assert np.abs(np.asarray(dx).reshape(-1, 16) - dx_ref).max() < 1.5e-5


@KERNEL_SETS
def test_batch_norm_gradient_through_returned_statistics(kn):
  """Both sets carry cotangents of the returned mean and variance (the CPU set's VJP)."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(40, 3)), jnp.float32)
  s, b = jnp.ones(3), jnp.zeros(3)
  f = lambda x: jnp.sum(jnp.stack(kn.batch_norm_train(x, s, b, 1e-5, None)[1:]) ** 2)
  ref = lambda x: jnp.sum(jnp.stack([x.mean(0), x.var(0)]) ** 2)
  np.testing.assert_allclose(jax.grad(f)(x), jax.grad(ref)(x), rtol=1e-4, atol=1e-6)


def test_cpu_add_bias_gradient():
  rng = np.random.default_rng(6)
  y = jnp.asarray(rng.normal(size=(3, 4, 4, 5)), jnp.float32)
  b = jnp.asarray(rng.normal(size=5), jnp.float32)
  probe = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  got = jax.grad(lambda y, b: jnp.sum(jnp.sin(cpu_kernels.add_bias(y, b)) * probe), (0, 1))(y, b)
  want = jax.grad(lambda y, b: jnp.sum(jnp.sin(y + b) * probe), (0, 1))(y, b)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('arch,size,nf', [('dcgan', 32, 4), ('vgg', 64, 2)])
@pytest.mark.parametrize('kernels', ['xla', 'cpu'])
def test_networks_read_variables_recorded_before_the_ops_refactor(arch, size, nf, kernels):
  """`tests/data/networks_before_ops.npz` holds the three autoencoder networks' variables
  and outputs written by version 0.2.0 (before the networks took one `layers.Ops`
  instead of `axis_name`/`dtype`/`kernels` fields): the same names, shapes and initial
  values, and the same outputs, so checkpoints and `mipae-convert` keep working."""
  from flax import traverse_util
  rec = np.load(os.path.join(os.path.dirname(__file__), 'data', 'networks_before_ops.npz'))
  c = tiny.get_config()
  c.model.arch, c.data.image_size, c.model.skips = arch, size, True
  c.model.nf, c.model.content_dim, c.model.pose_dim, c.model.kernels = nf, 8, 3, kernels
  m = models.build_models(c.model, c.data)
  x = jnp.asarray(rec[f'{arch}/input'])
  recorded = lambda name: traverse_util.unflatten_dict(
      {tuple(k.split('/')[3:]): jnp.asarray(rec[k]) for k in rec.files
       if k.startswith(f'{arch}/vars/{name}/')})
  (zc, skips), _ = m['content_encoder'].apply(recorded('content_encoder'), x, train=True,
                                              mutable=['batch_stats'])
  zp, _ = m['pose_encoder'].apply(recorded('pose_encoder'), x, train=True,
                                  mutable=['batch_stats'])
  y, _ = m['decoder'].apply(recorded('decoder'), zc, zp, skips, train=True,
                            mutable=['batch_stats'])
  y_eval = m['decoder'].apply(recorded('decoder'), zc, zp, skips, train=False)
  for name, value in (('z_c', zc), ('z_p', zp), ('frames_train', y), ('frames_eval', y_eval)):
    np.testing.assert_allclose(value, rec[f'{arch}/{kernels}/out/{name}'], atol=1e-6,
                               err_msg=name)
  # A fresh init has the recorded tree, key by key, shape by shape, value by value (up to
  # the last bit, which XLA's optimisation level may change).
  fresh = {'content_encoder': m['content_encoder'].init(jax.random.key(2), x),
           'pose_encoder': m['pose_encoder'].init(jax.random.key(3), x),
           'decoder': m['decoder'].init(jax.random.key(4), zc, zp, skips)}
  for name, variables in fresh.items():
    flat = traverse_util.flatten_dict(variables, sep='/')
    want = {k[len(f'{arch}/vars/{name}/'):] for k in rec.files
            if k.startswith(f'{arch}/vars/{name}/')}
    assert set(flat) == want, name
    for k, v in flat.items():
      np.testing.assert_allclose(v, rec[f'{arch}/vars/{name}/{k}'], rtol=1e-6, atol=1e-7,
                                 err_msg=k)
