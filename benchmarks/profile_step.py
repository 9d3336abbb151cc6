"""Where the time of one training iteration goes, per XLA op kind.

  python -m benchmarks.profile_step                 # AE iteration, batch 100, 3 steps
  python -m benchmarks.profile_step --stage lstm --batch 50 --out /tmp/prof

Compiles the step as `benchmarks.run` does, runs it twice to warm up, then traces
`--steps` steps with `jax.profiler` and prints the op time per kind
(`mipae_jax.profiling.summarize`) next to the wall time per step. On CPU the library
convolutions are not traced as ops: the wall time not covered by traced ops (divided
over the threads) is theirs. The trace stays in `--out` for TensorBoard or Perfetto.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax

from benchmarks.common import JaxAE, JaxLSTM, bench_config, sample_videos
from mipae_jax import data, profiling


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--stage', default='ae', choices=('ae', 'lstm'))
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--config', default='mipae_jax.configs.default')
  parser.add_argument('--out', default='', help='trace directory (default: a new temp dir)')
  parser.add_argument('--top', type=int, default=20, help='op kinds listed')
  args = parser.parse_args(argv)
  config = bench_config(args.batch, args.config, args.dtype)
  source = data.make_source(config.data)
  video = sample_videos(source, jax.random.key(10), args.batch)
  if args.stage == 'ae':
    step = JaxAE(config, video, sample_videos(source, jax.random.key(11), args.batch))
  else:
    step = JaxLSTM(config, video)
  for _ in range(2):
    step()
  out = args.out or tempfile.mkdtemp(prefix=f'profile_{args.stage}_')
  os.makedirs(out, exist_ok=True)
  with jax.profiler.trace(out, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      step()
    wall = (time.perf_counter() - t0) / args.steps
  print(f'{args.stage} iteration, batch {args.batch}, {args.dtype}, on '
        f'{jax.devices()[0].device_kind}: {wall * 1e3:.0f} ms per step of wall time '
        f'while tracing (compile {step.compile_s:.1f} s)')
  print(profiling.summarize(out, args.steps, args.top))


if __name__ == '__main__':
  main()
