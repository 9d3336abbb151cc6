"""The probe's least-squares fits with one OpenBLAS thread against the default, alone and
beside one busy process (what a pytest-xdist worker meets while the other one works).

  python -m benchmarks.blas_threads
  python -m benchmarks.blas_threads --reps=20

`mipae_jax.metrics.probe` fits each ordinal factor's level on z by least squares
(`numpy.linalg.lstsq`), on the training split: 350 x 131 for a tiny run's 500 frames,
14,000 x 131 at the validated 20,000 frames. OpenBLAS reads its thread count when numpy
loads, so each setting runs in a fresh process; the busy neighbour is a Python loop on
one core. Prints the median seconds per fit of every setting and the ratios default /
one thread, measured side by side in one run. Why `make test` sets
OPENBLAS_NUM_THREADS=1 (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

SHAPES = ((350, 131), (14_000, 131))

_CHILD = r'''
import statistics, sys, time
import numpy as np
rows, cols, reps = map(int, sys.argv[1:])
rng = np.random.default_rng(0)
x, y = rng.standard_normal((rows, cols)), rng.standard_normal((rows, 4))
np.linalg.lstsq(x, y, rcond=None)
times = []
for _ in range(reps):
  t = time.perf_counter()
  np.linalg.lstsq(x, y, rcond=None)
  times.append(time.perf_counter() - t)
print(statistics.median(times))
'''


def _fit_seconds(shape, reps: int, threads: str | None, busy: bool) -> float:
  env = dict(os.environ)
  env.pop('OPENBLAS_NUM_THREADS', None)
  if threads is not None:
    env['OPENBLAS_NUM_THREADS'] = threads
  neighbour = (subprocess.Popen([sys.executable, '-c', 'while True: pass'])
               if busy else None)
  try:
    out = subprocess.run([sys.executable, '-c', _CHILD, *map(str, shape), str(reps)],
                         env=env, capture_output=True, text=True, check=True).stdout
  finally:
    if neighbour is not None:
      neighbour.kill()
      neighbour.wait()
  return float(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--reps', type=int, default=10, help='fits timed per setting')
  args = parser.parse_args(argv)
  print(f'{os.cpu_count()} cores; median seconds per numpy.linalg.lstsq fit '
        f'({args.reps} fits)')
  print('| rows x cols | neighbour | default threads | 1 thread | default / 1 |')
  print('|---|---|---|---|---|')
  for shape in SHAPES:
    for busy in (False, True):
      default = _fit_seconds(shape, args.reps, None, busy)
      one = _fit_seconds(shape, args.reps, '1', busy)
      print(f'| {shape[0]} x {shape[1]} | {"one busy core" if busy else "none"} | '
            f'{default:.4f} | {one:.4f} | {default / one:.1f} |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
