"""Sequences per second: the on-device stream against a per-sample Python loop.

  python -m mipae_jax.data.benchmark [--batch 100] [--frames 15] [--mnist_path P]

The per-sample loop is the numpy reference renderer called one video at a time and collated
into a batch, as the published PyTorch Dataset + DataLoader did. MNIST uses random digits
unless --mnist_path is given (speed does not depend on the digits). A prepared TFDS dataset
read by training's reader (`config.data.pipeline='tfds'`) is timed by `python -m
benchmarks.run` against the stream.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from mipae_jax.data import dsprites, moving_mnist


def _rate(fn, seqs_per_call: int, min_seconds: float = 2.0) -> float:
  fn()  # Compile / warm up.
  calls, start = 0, time.perf_counter()
  while time.perf_counter() - start < min_seconds:
    fn()
    calls += 1
  return calls * seqs_per_call / (time.perf_counter() - start)


def device_rate(source, batch: int) -> float:
  sample = jax.jit(source.sample_batch, static_argnums=(1, 2))
  key = [jax.random.key(0)]

  def step():
    key[0], k = jax.random.split(key[0])
    jax.block_until_ready(sample(k, batch, 'train'))
  return _rate(step, batch)


def loop_rate(source, batch: int) -> float:
  rng = np.random.default_rng(0)

  def one_batch():  # Per-sample __getitem__, then collate.
    items = [source.sample_batch_numpy(rng, 1) for _ in range(batch)]
    np.stack([v[0] for v, _ in items])
  return _rate(one_batch, batch)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--frames', type=int, default=15)
  parser.add_argument('--mnist_path', default='')
  args = parser.parse_args(argv)
  print(f'device: {jax.devices()[0].device_kind} x{jax.local_device_count()}, '
        f'batch {args.batch} x {args.frames} frames x 64 x 64')

  ds = dsprites.MovingDSprites(num_frames=args.frames, channels=3)
  if args.mnist_path:
    mnist = moving_mnist.load_mnist(args.mnist_path)
  else:
    rng = np.random.default_rng(0)
    mnist = {s: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n))
             for s, n in (('train', 60_000), ('test', 10_000))}
  mm = moving_mnist.MovingMnist(mnist, num_frames=args.frames, channels=1)

  for name, src in (('moving_dsprites (RGB)', ds), ('moving_mnist (gray)', mm)):
    dev = device_rate(src, args.batch)
    loop = loop_rate(src, args.batch)
    print(f'{name:24s} on-device stream {dev:10.0f} seq/s | per-sample loop {loop:8.0f} seq/s '
          f'({1e3 / loop:.2f} ms/seq) | ratio {dev / loop:6.1f}x')


if __name__ == '__main__':
  main()
