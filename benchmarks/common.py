"""What the benchmarks share: alternating timing rounds and their ratios, the benchmarked
config and videos, the jitted mipae_jax steps compiled ahead of time, and torch's device.
"""

from __future__ import annotations

import importlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mipae_jax import models, parallel, train


def round_times(fns: dict, reps: int, warmup: int = 1) -> dict:
  """Calls each fn `warmup` times, then `reps` rounds alternating fns; seconds per call,
  round by round (`{name: [s, ...]}`)."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  return times


def medians(times: dict) -> dict:
  """`{name: median}` of `round_times`' `{name: [s, ...]}`."""
  return {k: statistics.median(v) for k, v in times.items()}


def median_times(fns: dict, reps: int, warmup: int = 1) -> dict:
  """Median seconds per call of each fn over `reps` alternating rounds."""
  return medians(round_times(fns, reps, warmup))


def paired_ratios(ref_times: list, new_times: list) -> tuple[float, float, float]:
  """(median, min, max) over rounds of `ref_times[i] / new_times[i]`: how many times
  faster the new side ran than the reference in round i.

  Each round times both implementations back to back, so a round's ratio shares that
  moment's machine load; on a shared machine their spread says how far a single ratio
  of medians can be trusted."""
  r = [a / b for a, b in zip(ref_times, new_times, strict=True)]
  return statistics.median(r), min(r), max(r)


def bench_config(batch: int, module: str = 'mipae_jax.configs.default', dtype: str = 'float32'):
  c = importlib.import_module(module).get_config()
  c.batch_size = batch
  c.model.dtype = dtype
  return c


def sample_videos(source, key, batch):
  v = source.jit_sample_batch(key, batch, 'train')[0]
  return np.asarray(v)


def torch_device(torch, requested: str) -> str:
  """The torch device to compare on: the accelerator JAX uses, unless told otherwise."""
  if requested != 'auto':
    return requested
  if jax.default_backend() == 'gpu':
    if not torch.cuda.is_available():
      raise SystemExit('JAX runs on a GPU but this torch has no CUDA: a GPU-vs-CPU ratio '
                       'means nothing. Install a CUDA build of torch, or pass '
                       '--torch_device cpu to compare anyway.')
    return 'cuda'
  return 'cpu'


class JaxAE:
  """The jitted mipae_jax AE step on one device, compiled ahead of time."""

  def __init__(self, config, video, critic_video):
    self.state = train.create_train_state(config, jax.random.key(0))
    self.batch = {'video': jnp.asarray(video), 'critic_video': jnp.asarray(critic_video)}
    self.key = jax.random.key(1)
    step = parallel.make_train_step(config, 'ae', 'jit')
    t0 = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch, self.key).compile()
    self.compile_s = time.perf_counter() - t0

  def __call__(self, batch=None):
    self.state, m = self.compiled(self.state, self.batch if batch is None else batch, self.key)
    jax.block_until_ready(m)


class JaxLSTM:
  def __init__(self, config, video):
    ae = train.create_train_state(config, jax.random.key(0))
    self.ae_vars = train.autoencoder_variables(ae)
    self.state = train.create_lstm_state(config, jax.random.key(2))
    self.batch = {'video': jnp.asarray(video)}
    step = parallel.make_train_step(config, 'lstm', 'jit')
    t0 = time.perf_counter()
    self.compiled = step.lower(self.state, self.ae_vars, self.batch, jax.random.key(0)).compile()
    self.compile_s = time.perf_counter() - t0

  def __call__(self):
    self.state, m = self.compiled(self.state, self.ae_vars, self.batch, jax.random.key(0))
    jax.block_until_ready(m)

  def flops(self, config) -> float:
    """FLOPs of one iteration. On CPU the step pose-encodes the T frame indices in a
    `lax.map` loop, whose body XLA's cost analysis counts once: add the other T-1."""
    fl = xla_flops(self.compiled)
    if jax.default_backend() == 'cpu':
      frames = self.batch['video'][:, 0]
      encode = jax.jit(lambda v, x: models.build_models(config.model, config.data)[
          'pose_encoder'].apply(v, x, train=False))
      pose_vars = {k: self.ae_vars[k]['pose_encoder'] for k in ('params', 'batch_stats')}
      body = xla_flops(encode.lower(pose_vars, frames).compile())
      fl += (self.batch['video'].shape[1] - 1) * body
    return fl


def xla_flops(compiled) -> float:
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  return float(ca.get('flops', float('nan')))


class JaxLSTMCodes:
  """The LSTM iteration on codes encoded beforehand (`config.lstm.code_pool`): the same
  update as `JaxLSTM`'s without its encoder passes."""

  def __init__(self, config, video):
    ae = train.create_train_state(config, jax.random.key(0))
    h_c, h_p = jax.jit(train.lstm_encoder(config))(
        train.autoencoder_variables(ae), jnp.asarray(video))
    self.state = train.create_lstm_state(config, jax.random.key(2))
    self.batch = {'h_c': h_c, 'h_p': h_p}
    step = parallel.make_train_step(config, 'lstm_codes', 'jit')
    t0 = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch, jax.random.key(0)).compile()
    self.compile_s = time.perf_counter() - t0

  def __call__(self):
    self.state, m = self.compiled(self.state, self.batch, jax.random.key(0))
    jax.block_until_ready(m)
