"""Where a stage's batches come from, and how values reach the mesh.

A stage's batch source answers `for_step(step)`, `get_state()`, `restore(state, step)`
and `epoch(step)` (`stages.run_stage` takes any such source): `KeyedBatches` serves a
stream (rendered videos, or the LSTM's pool of cached codes), in which step s's batch is a
pure function of s; `data.tfds_source.TrainBatches` reads a prepared dataset, its position
kept in every checkpoint. Each global batch is split over the mesh's devices; several
processes each hold only their own devices' rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mipae_jax import parallel, train


def replicate_on_mesh(tree, mesh):
  """Copies every leaf of `tree` to all devices of `mesh` (global, replicated).

  Single process: a plain `device_put`. Several processes: a fresh state sits on one
  local device, and `device_put` cannot move it to other hosts' devices; every process
  holds the same values (same seed), so each fills its own devices from a host copy.
  """
  return _place_from_host(tree, NamedSharding(mesh, P()))


def _place_from_host(tree, sharding):
  """Every leaf of `tree` (the same values on every process) as a global array with
  `sharding`: one process puts it directly; several each fill only their own devices
  from a host copy (`device_put` cannot reach other hosts' devices)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x  # Already there (a restored or trained state).
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


@dataclasses.dataclass
class KeyedBatches:
  """The batches of a stream: step s's batch is `sample(fold_in(key, s))`, a pure function
  of the step, so resuming needs no state. One of the two batch sources `run_stage`
  takes, with `data.tfds_source.TrainBatches` (a reader whose position every checkpoint
  holds); both answer `for_step`, `get_state`, `restore` and `epoch`."""
  sample: Callable[[jax.Array], Any]  # `key -> global batch`.
  key: jax.Array

  def for_step(self, step: int):
    return self.sample(jax.random.fold_in(self.key, step))

  def get_state(self) -> None:
    return None  # Nothing to save: the step number is the position.

  def restore(self, state, step: int) -> None:
    del state, step

  def epoch(self, step: int) -> None:
    del step
    return None  # A stream has no epochs.


def stage_batches(config, source, mesh, stage: str, num_steps: int, key):
  """The batches of a stage: the stream's (`make_batch_fn` folded with `key`), or a
  `TrainBatches` reader of the prepared train split for `config.data.pipeline='tfds'`."""
  if config.data.pipeline == 'tfds':
    from mipae_jax.data import tfds_source
    return tfds_source.TrainBatches(config, source.sources['train'], mesh, stage, num_steps)
  return KeyedBatches(make_batch_fn(config, source, mesh, stage), key)


def make_batch_fn(config, source, mesh, stage: str):
  """`batch(key) -> {'video', 'critic_video'?}` global batch split over `mesh`.

  On-device sources sample inside one jitted program whose output is already laid
  out over the devices; host sources (MPI3D) sample with numpy and are then placed.
  The autoencoder stage draws two batches per iteration (the model step uses a new one,
  docs/method.md section 2); the LSTM stage one.

  Several processes: every process draws the same global batch from the same key
  and keeps the rows of its own devices (on device, the jitted sampler computes only
  the shards this process holds; on the host, `make_array_from_callback` picks them),
  so the processes never exchange data and together hold exactly the batch one
  process would draw.
  """
  b = config.batch_size
  sharding = NamedSharding(mesh, P(parallel.AXIS))

  def sample(key):
    if stage == 'lstm':
      return {'video': source.sample_batch(key, b, 'train')[0]}
    k_model, k_critic = jax.random.split(key)
    return {'video': source.sample_batch(k_model, b, 'train')[0],
            'critic_video': source.sample_batch(k_critic, b, 'train')[0]}

  if source.on_device:
    return jax.jit(sample, out_shardings=sharding)
  return lambda key: _place_from_host(sample(key), sharding)


# fold_in index of the code pool's key in the LSTM data stream (steps use 0, 1, ...).
POOL_STREAM = 2 ** 32 - 1


def encode_code_pool(config, source, ae_variables, mesh, key) -> dict:
  """`config.lstm.code_pool` videos drawn from `source` (batch by batch, batch i from
  `fold_in(key, i)`) and encoded once with the frozen autoencoder:
  `{'h_c': [N, Dc], 'h_p': [N, T, Dp]}`, replicated on `mesh`.

  A video's codes are a pure function of the video (inference-mode encoders), so the
  LSTM trained on them is the LSTM trained on these videos; only the per-iteration
  encoder passes go.
  """
  n, b = config.lstm.code_pool, config.batch_size
  videos = make_batch_fn(config, source, mesh, 'lstm')
  encode = jax.jit(train.lstm_encoder(config))
  h_c, h_p = [], []
  for i in range(-(-n // b)):
    c, p = encode(ae_variables, videos(jax.random.fold_in(key, i))['video'])
    h_c.append(c)
    h_p.append(p)
  replicated = NamedSharding(mesh, P())
  gather = jax.jit(lambda c, p: {'h_c': jnp.concatenate(c)[:n], 'h_p': jnp.concatenate(p)[:n]},
                   out_shardings=replicated)
  return gather(h_c, h_p)


def make_code_batch_fn(config, codes: dict, mesh):
  """`batch(key) -> {'h_c', 'h_p'}`: `config.batch_size` pool entries drawn uniformly
  (with replacement) by `key`, split over `mesh` like a video batch."""
  n = codes['h_c'].shape[0]
  pick = jax.jit(
      lambda codes, key: jax.tree.map(
          lambda x: x[jax.random.randint(key, (config.batch_size,), 0, n)], codes),
      out_shardings=NamedSharding(mesh, P(parallel.AXIS)))
  return functools.partial(pick, codes)
