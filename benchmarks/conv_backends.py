"""Per-layer profile of the DCGAN autoencoder's convolutions, side by side in one process.

  python -m benchmarks.conv_backends            # batch 100, 5 alternating rounds
  python -m benchmarks.conv_backends --quick    # batch 50, 3 rounds (about a minute)

For each 4x4 stride-2 layer of the 64x64 encoder (`Conv2d`) and decoder
(`ConvTranspose2d`), it times the forward pass, the kernel gradient (dW) and the input
gradient (dX), and prints GFLOP/s (multiply-adds x 2 of that one pass) for:

- `xla`: what a straightforward JAX model compiles to: `lax.conv_general_dilated` (an
  input-dilated one for the transposed convolution, as `nn.ConvTranspose` builds), XLA's
  default CPU pipeline (convolutions offloaded to YNNPACK);
- `xla-eigen`: the same ops compiled with `mipae_jax.compiler.options()`;
- `mipae_jax`: the layers the models use (`cpu_kernels.conv4x4_down`,
  `cpu_kernels.conv_transpose4x4_up`: custom VJPs) with `mipae_jax.compiler.options()`;
- `torch`: `nn.Conv2d` / `nn.ConvTranspose2d`, channels-last, oneDNN (`--threads`);
  dW and dX by `torch.autograd.grad` over one recorded forward graph.

Then the BatchNorm channel sums: `jnp.sum` over batch and space vs `cpu_kernels.channel_sum`,
and one training-mode BatchNorm layer (forward and backward) with the one-pass
E[x^2] - E[x]^2 statistics it used to compute against the corrected two-pass statistics
of `cpu_kernels.batch_norm_train` now (one more read of the activation, no lost precision).

On a GPU the compiler options are empty (`xla-eigen` is left out), torch runs on the same
card (cuDNN) and each timed call waits for it; `--dtype bfloat16` profiles bfloat16
operands on both sides. This is the table that says whether the formulations chosen on
CPU measurements (4-phase transposed convolution, matrix-vector channel sums) also pay
on an accelerator, against XLA's plain ops.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import median_times, torch_device
from mipae_jax import compiler, cpu_kernels

DOWN = [(64, 3, 64), (32, 64, 128), (16, 128, 256), (8, 256, 512)]  # (in size, in, out)
UP = [(4, 512, 256), (8, 256, 128), (16, 128, 64), (32, 64, 3)]
_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _xla_down(x, k):
  return jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_DIMS)


def _xla_up(x, k):
  return jax.lax.conv_general_dilated(x, k[::-1, ::-1], (1, 1), ((2, 2), (2, 2)),
                                      lhs_dilation=(2, 2), dimension_numbers=_DIMS)


def _jax_passes(fn, options):
  """Jitted forward, kernel-gradient and input-gradient functions of `fn(x, k)`."""
  jit = lambda f: jax.jit(f, compiler_options=options)
  return {
      'fwd': jit(lambda x, k, dy: fn(x, k)),
      'dW': jit(lambda x, k, dy: jax.vjp(lambda k: fn(x, k), k)[1](dy)[0]),
      'dX': jit(lambda x, k, dy: jax.vjp(lambda x: fn(x, k), x)[1](dy)[0]),
  }


def _torch_passes(torch, up: bool, cin: int, cout: int, x, k, dy, dtype: str):
  """Forward, dW and dX closures for the torch layer on JAX's kind of device; each
  gradient pass reuses one recorded forward graph (`retain_graph`), so it times the
  backward kernel alone, and each returns once the device is done."""
  from benchmarks.torch_reference import synchronize
  dev = torch_device(torch, 'auto')
  tdtype = getattr(torch, dtype)
  mod = (torch.nn.ConvTranspose2d(cin, cout, 4, 2, 1) if up
         else torch.nn.Conv2d(cin, cout, 4, 2, 1))
  with torch.no_grad():
    # HWIO -> torch layouts: Conv2d [out, in, kh, kw]; ConvTranspose2d [in, out, kh, kw].
    w = np.transpose(k, (2, 3, 0, 1) if up else (3, 2, 0, 1))
    mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
  mod = mod.to(dev, tdtype, memory_format=torch.channels_last)
  cl = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(
      dev, tdtype).contiguous(memory_format=torch.channels_last)
  tx, tdy = cl(x), cl(dy)
  txg = tx.clone().requires_grad_(True)
  y_w = mod(tx)  # Graph to the weight only.
  y_x = mod(txg)  # Graph to the input (the weight gradient is not requested).

  def fwd():
    with torch.no_grad():
      mod(tx)
    synchronize(dev)

  def grad(y, wrt):
    def call():
      torch.autograd.grad(y, wrt, tdy, retain_graph=True)
      synchronize(dev)
    return call

  return {'fwd': fwd, 'dW': grad(y_w, mod.weight), 'dX': grad(y_x, txg)}


def profile_layer(up: bool, size: int, cin: int, cout: int, batch: int, reps: int, torch,
                  dtype: str = 'float32'):
  rng = np.random.default_rng(0)
  out_size = size * 2 if up else size // 2
  x = rng.standard_normal((batch, size, size, cin), np.float32)
  k = (rng.standard_normal((4, 4, cin, cout)) * 0.05).astype(np.float32)
  dy = rng.standard_normal((batch, out_size, out_size, cout), np.float32)
  flops = 2 * batch * 16 * cin * cout * (size * size if up else out_size * out_size)
  xla_fn = _xla_up if up else _xla_down
  ours = cpu_kernels.conv_transpose4x4_up if up else cpu_kernels.conv4x4_down
  impls = {'xla': (xla_fn, None), 'xla-eigen': (xla_fn, compiler.options()),
           'mipae_jax': (ours, compiler.options())}
  if compiler.options() is None:  # Not on CPU: no options, so xla-eigen would be xla.
    del impls['xla-eigen']
  args = tuple(jnp.asarray(a, dtype) for a in (x, k, dy))
  fns = {}
  for name, (fn, options) in impls.items():
    for p, f in _jax_passes(fn, options).items():
      fns[name, p] = (lambda f=f: jax.block_until_ready(f(*args)))
  if torch is not None:
    for p, f in _torch_passes(torch, up, cin, cout, x, k, dy, dtype).items():
      fns['torch', p] = f
  t = median_times(fns, reps)
  names = list(impls) + (['torch'] if torch is not None else [])
  return {name: {p: flops / t[name, p] / 1e9 for p in ('fwd', 'dW', 'dX')} for name in names}


def profile_channel_sums(batch: int, reps: int, dtype: str = 'float32'):
  rows = []
  for size, c in ((32, 64), (16, 128), (8, 256)):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, c)), dtype)
    plain = compiler.jit(lambda a: jnp.sum(a, axis=(0, 1, 2)))
    ours = compiler.jit(cpu_kernels.channel_sum)
    np.testing.assert_allclose(np.float32(ours(x)), np.float32(plain(x)), rtol=1e-2, atol=1)
    t = median_times({'sum': lambda f=plain, x=x: jax.block_until_ready(f(x)),
                       'matvec': lambda f=ours, x=x: jax.block_until_ready(f(x))}, reps)
    rows.append((f'[{batch}, {size}, {size}, {c}]', t['sum'] * 1e3, t['matvec'] * 1e3))
  return rows


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn_one_pass(x, scale, bias, epsilon, axis_name):
  """The layer as it was: E[x^2] - E[x]^2 statistics, the same backward pass."""
  return _bn_one_pass_fwd(x, scale, bias, epsilon, axis_name)[0]


def _bn_one_pass_fwd(x, scale, bias, epsilon, axis_name):
  count = x.size // x.shape[-1]
  mean = cpu_kernels.channel_sum(x) / count
  var = jnp.maximum(cpu_kernels.channel_sum(x * x) / count - mean * mean, 0.0)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (rstd * scale) + bias
  return (y, mean, var), (x, mean, rstd, scale)


_bn_one_pass.defvjp(_bn_one_pass_fwd, cpu_kernels._bn_bwd)


def profile_batch_norm(batch: int, reps: int):
  """ms per forward + backward of one BatchNorm layer: one-pass vs the layer's own."""
  rows = []
  for size, c in ((32, 64), (16, 128), (8, 256)):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, c)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    scale, bias = jnp.ones((c,)), jnp.zeros((c,))
    fns = {}
    for name, bn in (('one_pass', _bn_one_pass), ('two_pass', cpu_kernels.batch_norm_train)):
      f = lambda a, s, b, bn=bn: bn(a, s, b, 1e-5, None)[0]
      step = compiler.jit(lambda a, s, b, g, f=f: jax.vjp(f, a, s, b)[1](g))
      args = (x, scale, bias, dy)
      fns[name] = lambda step=step, args=args: jax.block_until_ready(step(*args))
    t = median_times(fns, reps)
    rows.append((f'[{batch}, {size}, {size}, {c}]', t['one_pass'] * 1e3,
                 t['two_pass'] * 1e3))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--batch', type=int, default=0, help='default 100 (50 with --quick)')
  parser.add_argument('--reps', type=int, default=0, help='timed rounds (default 5 / 3)')
  parser.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  args = parser.parse_args(argv)
  batch = args.batch or (50 if args.quick else 100)
  reps = args.reps or (3 if args.quick else 5)
  try:
    import torch
    torch.set_num_threads(args.threads)
  except ImportError:
    torch = None
    print('torch is not installed (pip install -e ".[bench]"): JAX columns only')
  where = '' if torch is None else '; torch on ' + torch_device(torch, 'auto')
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind}{where}; {args.dtype}; '
        f'batch {batch}; medians of {reps}; GFLOP/s per pass (higher is faster)')
  print()
  for up, shapes, title in ((False, DOWN, 'Conv2d(4, stride 2)'),
                            (True, UP, 'ConvTranspose2d(4, stride 2)')):
    header = None
    for size, cin, cout in shapes:
      res = profile_layer(up, size, cin, cout, batch, reps, torch, args.dtype)
      if header is None:
        header = ['layer'] + [f'{n} {p}' for n in res for p in ('fwd', 'dW', 'dX')]
        print(f'{title}:')
        print('| ' + ' | '.join(header) + ' |')
        print('|' + '---|' * len(header))
      cells = [f'{size}x{size} {cin}->{cout}'] + [f'{res[n][p]:.0f}' for n in res
                                                   for p in ('fwd', 'dW', 'dX')]
      print('| ' + ' | '.join(cells) + ' |', flush=True)
    print()
  print('BatchNorm channel sums (ms):')
  print('| activation | jnp.sum | cpu_kernels.channel_sum |')
  print('|---|---|---|')
  for shape, plain, ours in profile_channel_sums(batch, reps, args.dtype):
    print(f'| {shape} | {plain:.2f} | {ours:.2f} |')
  print()
  print('BatchNorm layer, forward + backward (ms):')
  print('| activation | one-pass E[x^2]-E[x]^2 | cpu_kernels.batch_norm_train (two-pass) | ratio |')
  print('|---|---|---|---|')
  for shape, old, new in profile_batch_norm(batch, reps):
    print(f'| {shape} | {old:.2f} | {new:.2f} | {old / new:.2f} |')


if __name__ == '__main__':
  main()
