"""What the test suite's XLA flag buys: compile and run times of the tiny config's
autoencoder train step and one probe fit, with XLA:CPU's fusion emitters (XLA's default)
and with its loop emitters (`--xla_cpu_use_fusion_emitters=false`, which `make test`
sets), each side in a fresh process without a compilation cache, rounds alternating.

  python -m benchmarks.suite_compile [--rounds=3]

Both sides run under the suite's other flags (4 CPU devices, XLA's optimisation level 0;
the probe compiles at level 3 as always). Prints each part's median seconds, the paired
ratios (fusion emitters over loop emitters: how many times faster the suite's side is),
and whether the two sides computed the same bits (the step's metrics, the probe's
cross-entropies). The suite compiles hundreds of such programs and runs each a few
times, so the compile time is what counts there; BENCHMARKS.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks import common

BASE_FLAGS = '--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0'
LOOP_EMITTERS = '--xla_cpu_use_fusion_emitters=false'
SIDES = {'fusion': BASE_FLAGS, 'loop': f'{BASE_FLAGS} {LOOP_EMITTERS}'}
PARTS = ('step_compile_s', 'step_run_s', 'probe_fit_s')


def measure(reps: int = 5, probe_frames: int = 2000) -> dict:
  """In this process, under its XLA_FLAGS: seconds to compile the tiny config's
  autoencoder train step (jit, no donation) and the median of `reps` runs of it, and
  seconds of one probe fit (compile and epochs, `probe_frames` synthetic frames); with the
  step's metrics and the probe's held-out cross-entropies, to compare bits."""
  import time

  import jax
  import numpy as np

  from mipae_jax import parallel, train
  from mipae_jax.configs import tiny
  from mipae_jax.metrics import probe

  config = tiny.get_config()
  d = config.data
  state = train.create_train_state(config, jax.random.key(0))
  rng = np.random.default_rng(0)
  shape = (config.batch_size, d.input_frames + d.target_frames, d.image_size, d.image_size,
           d.channels)
  batch = {'video': rng.random(shape, np.float32), 'critic_video': rng.random(shape, np.float32)}
  key = jax.random.key(1)
  lowered = parallel.make_train_step(config, mode='jit', donate=False).lower(state, batch, key)
  t = time.perf_counter()
  step = lowered.compile()
  compile_s = time.perf_counter() - t
  _, metrics = jax.block_until_ready(step(state, batch, key))
  run_s = common.median_times({'step': lambda: jax.block_until_ready(step(state, batch, key))},
                              reps, warmup=0)['step']
  n = probe_frames
  ids = np.stack([rng.integers(0, 3, n), rng.integers(0, 8, n)], 1)
  z = np.hstack([ids + rng.normal(0, 1, ids.shape), rng.normal(size=(n, 6))])
  t = time.perf_counter()
  fit = probe.train_probe(z.astype(np.float32), ids, (3, 8), (False, True))
  probe_s = time.perf_counter() - t
  return {'step_compile_s': compile_s, 'step_run_s': run_s,
          'probe_fit_s': probe_s,
          'metrics': {k: float(v) for k, v in sorted(metrics.items())},
          'probe_ce': [float(x) for x in fit['ce_test']]}


def run_side(flags: str) -> dict:
  """`measure()` in a fresh process under `flags`, without a compilation cache."""
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(XLA_FLAGS=flags, JAX_PLATFORMS='cpu', JAX_ENABLE_COMPILATION_CACHE='false')
  out = subprocess.run([sys.executable, '-m', 'benchmarks.suite_compile', '--child'], env=env,
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f'the measuring process failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: dict) -> str:
  """The table of `{side: [measure() per round]}`: medians, paired ratios, same bits."""
  lines = ['| part | fusion emitters (s) | loop emitters (s) | ratio (per-round range) |',
           '|---|---|---|---|']
  for part in PARTS:
    fusion = [r[part] for r in results['fusion']]
    loop = [r[part] for r in results['loop']]
    mid, lo, hi = common.paired_ratios(fusion, loop)
    lines.append(f'| {part} | {statistics.median(fusion):.3f} | {statistics.median(loop):.3f} '
                 f'| {mid:.2f} ({lo:.2f}-{hi:.2f}) |')
  a, b = results['fusion'][0], results['loop'][0]
  step_diff = max(abs(a['metrics'][k] - b['metrics'][k]) for k in a['metrics'])
  probe_diff = max(abs(x - y) for x, y in zip(a['probe_ce'], b['probe_ce'], strict=True))
  lines.append(f'\nlargest difference between the sides: step metrics {step_diff:.3g}, '
               f'probe cross-entropies {probe_diff:.3g} nats')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(measure()))
    return
  results = {side: [] for side in SIDES}
  for r in range(args.rounds):
    for side, flags in SIDES.items():
      results[side].append(run_side(flags))
      print(f'round {r + 1}/{args.rounds} {side}: '
            + ' '.join(f'{p}={results[side][-1][p]:.3f}' for p in PARTS), flush=True)
  print(report(results))


if __name__ == '__main__':
  main()
