"""The least time the default config's evaluation can take on this machine, from its
arithmetic: what the encoders' pass over `eval.mig_samples` frames costs at the best
rate this machine multiplies matrices.

  python -m benchmarks.eval_floor                 # default config, 100,000 frames
  python -m benchmarks.eval_floor --frames=2000   # frames actually encoded and timed

Prints, for the default config's networks (randomly initialised: the cost does not depend
on the weights):
- the floating-point operations of `evaluate.encode_static`'s jitted encoder call per
  frame, as XLA's own cost analysis counts them (both encoders, `predict.encode_frames`);
- the encoders' measured time per frame over --frames frames, in batches of
  `evaluate.ENCODE_BATCH`, as the evaluation runs them;
- this machine's best dense float32 rate: XLA's 2048 x 2048 matrix product, median of 5
  (a convolution cannot run faster than the matrix units a large product keeps busy);
- the floor for `--mig_frames` frames: FLOPs / best rate, and the measured extrapolation.

The evaluation does more than this pass (four probes, the kNN estimators, 1,000 predicted
test videos, LPIPS, FVD: BENCHMARKS.md gives their costs); the floor bounds it from below.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from mipae_jax import compiler, configs, evaluate, models, predict, train


def flops_of(compiled) -> float:
  """Floating-point operations XLA counts in a compiled program."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def matmul_rate(n: int = 2048, reps: int = 5) -> float:
  """Best dense float32 rate (FLOP/s): median time of an n x n product."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  seconds = common.median_times({'product': lambda: f(a).block_until_ready()}, reps)
  return 2 * n ** 3 / seconds['product']


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='default')
  p.add_argument('--frames', type=int, default=2000, help='frames encoded and timed')
  p.add_argument('--mig_frames', type=int, default=100_000)
  args = p.parse_args(argv)

  config = configs.get(args.config)
  nets = models.networks(config)
  size, channels = config.data.image_size, config.data.channels
  batch = evaluate.ENCODE_BATCH
  state = train.create_train_state(config, jax.random.key(0))
  variables = train.autoencoder_variables(state)
  x = np.random.default_rng(0).random((batch, size, size, channels), np.float32)
  # The evaluation's own program, compiled once: counted, then timed.
  encode = compiler.jit(lambda v, x: predict.encode_frames(nets, v, x)).lower(
      variables, x).compile()
  per_frame = flops_of(encode) / batch
  jax.block_until_ready(encode(variables, x))  # A first call, untimed.
  calls = max(1, args.frames // batch)
  t = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(encode(variables, x))
  seconds = (time.perf_counter() - t) / (calls * batch)
  rate = matmul_rate()
  n = args.mig_frames
  print(f'config {args.config}: {size}x{size}x{channels}, nf {config.model.nf}, '
        f'{jax.device_count()} CPU device(s)')
  print('| quantity | value |')
  print('|---|---|')
  print(f'| encoders, FLOPs per frame (XLA cost analysis) | {per_frame / 1e6:.4g} M |')
  print(f'| encoders, measured time per frame | {seconds * 1e3:.2f} ms '
        f'({per_frame / seconds / 1e9:.0f} GFLOP/s) |')
  print(f'| best dense float32 rate (2048^2 product) | {rate / 1e9:.0f} GFLOP/s |')
  print(f'| {n:,} frames at that best rate (floor) | {n * per_frame / rate:.0f} s |')
  print(f'| {n:,} frames at the measured rate | {n * seconds:.0f} s |')


if __name__ == '__main__':
  main()
