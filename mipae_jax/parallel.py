"""Jitted, data-parallel forms of the train steps.

The per-device steps in `mipae_jax.train` use explicit collectives over one named axis.
`make_train_step` wraps them three ways, all giving the same numbers:

- `'jit'`: one device, no axis.
- `'shard_map'` (default): `jax.jit` over a 1-D `Mesh` of all devices. State and
  keys are replicated, the batch is split along its first axis. `check_vma=False` keeps
  pmap's semantics: gradients of replicated parameters come back per device and are
  averaged by the step's own `pmean` (with `check_vma=True` JAX would already have
  summed them, and the explicit `pmean` would count them again).
- `'pmap'`: `jax.pmap`; the caller replicates the state (`replicate`) and shapes the
  batch `[D, B/D, ...]` (`mipae_jax.data.sharding.shard_batch`). `jax.pmap` takes no
  compiler options, so on CPU this form runs without `mipae_jax.compiler.options()`.

`'jit'` and `'shard_map'` compile with `mipae_jax.compiler.options()` (faster CPU
convolutions; nothing changes on GPU/TPU).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mipae_jax import compiler, train

AXIS = 'batch'
MODES = ('jit', 'shard_map', 'pmap')
STAGES = ('ae', 'lstm', 'lstm_codes')


def local_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `batch` over `devices` (default: every device of every process,
  so one mesh spans all hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def check_divisible(global_batch: int, num_devices: int):
  if global_batch % num_devices:
    raise ValueError(
        f'config.batch_size={global_batch} does not divide over {num_devices} devices; '
        f'use a multiple of {num_devices} '
        f'(e.g. {num_devices * max(1, global_batch // num_devices)}) or run on fewer devices.')


@compiler.per_config
def make_train_step(config, stage: str = 'ae', mode: str = 'shard_map', mesh: Mesh | None = None,
                    donate: bool = True):
  """The jitted step of `stage` ('ae', 'lstm' or 'lstm_codes') in `mode` (see module
  docstring).

  Returns:
    ae:   `step(state, batch, key) -> (state, metrics)`
    lstm: `step(state, ae_variables, batch, key) -> (state, metrics)`
    lstm_codes: `step(state, codes, key) -> (state, metrics)`, codes
      `{'h_c': [B, Dc], 'h_p': [B, T, Dp]}` (`train.lstm_codes_step`)
    `batch` is global (`[B, T, H, W, C]` leaves) for 'jit' and 'shard_map', and
    `[D, B/D, ...]` for 'pmap'. Metrics are device-averaged scalars.
  """
  if stage not in STAGES:
    raise ValueError(f'stage must be one of {STAGES}; got {stage!r}.')
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}; got {mode!r}.')
  fn = {'ae': train.ae_train_step, 'lstm': train.lstm_train_step,
        'lstm_codes': train.lstm_codes_step}[stage]
  # Arguments other than the state and the batch are replicated.
  n_extra = 1 if stage == 'lstm' else 0
  donate_argnums = (0,) if donate else ()

  if mode == 'jit':
    return compiler.jit(functools.partial(fn, config=config), donate_argnums=donate_argnums)

  per_device = functools.partial(fn, config=config, axis_name=AXIS)
  if mode == 'pmap':
    in_axes = (0,) + (0,) * n_extra + (0, None)
    return jax.pmap(per_device, axis_name=AXIS, in_axes=in_axes,
                    donate_argnums=donate_argnums)

  mesh = local_mesh() if mesh is None else mesh
  check_divisible(config.batch_size, mesh.devices.size)
  in_specs = (P(),) + (P(),) * n_extra + (P(AXIS), P())
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=in_specs,
                          out_specs=(P(), P()), check_vma=False)
  return compiler.jit(sharded, donate_argnums=donate_argnums)


def replicate(tree, devices=None):
  """Copies of `tree` stacked on a leading device axis, for the 'pmap' form."""
  devices = jax.local_devices() if devices is None else devices
  n = len(devices)
  sharding = NamedSharding(local_mesh(devices), P(AXIS))
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding),
      tree)


def unreplicate(tree):
  """The first device's copy of a replicated tree."""
  return jax.tree_util.tree_map(lambda x: x[0], tree)
