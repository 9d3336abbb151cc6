"""Time to the first training step: imports, `create_train_state`, and the first
compiled autoencoder step, for a packaged config, each part timed on its own.

  python -m benchmarks.first_step --config=tiny [--config=default]

Run it on an idle machine (compilation is single-threaded in part, but not all of it);
BENCHMARKS.md records the figures.
"""

from __future__ import annotations

import argparse
import time

T0 = time.perf_counter()


def measure(name: str) -> dict:
  import jax

  from mipae_jax import batches, configs, data, parallel, pipeline, train

  t_import = time.perf_counter() - T0
  config = configs.get(name)
  keys = pipeline.root_keys(config)
  t = time.perf_counter()
  state = train.create_train_state(config, keys['ae_init'])
  jax.block_until_ready(state)
  t_state = time.perf_counter() - t

  mesh = parallel.local_mesh()
  source = data.make_source(config.data)
  batch_fn = batches.make_batch_fn(config, source, mesh, 'ae')
  step_fn = parallel.make_train_step(config, 'ae', 'shard_map', mesh)
  t = time.perf_counter()
  batch = batch_fn(jax.random.key(0))
  jax.block_until_ready(batch)
  t_batch = time.perf_counter() - t
  state = batches.replicate_on_mesh(state, mesh)
  t = time.perf_counter()
  out = step_fn(state, batch, jax.random.key(1))
  jax.block_until_ready(out)
  t_step = time.perf_counter() - t
  t = time.perf_counter()
  out = step_fn(out[0], batch, jax.random.key(2))
  jax.block_until_ready(out)
  t_second = time.perf_counter() - t
  return {'config': name, 'import_s': t_import, 'create_train_state_s': t_state,
          'first_batch_s': t_batch, 'first_step_s': t_step, 'second_step_s': t_second,
          'total_s': time.perf_counter() - T0}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='tiny')
  args = parser.parse_args(argv)
  r = measure(args.config)
  print(' '.join(f'{k}={v:.2f}' if isinstance(v, float) else f'{k}={v}' for k, v in r.items()))


if __name__ == '__main__':
  main()
