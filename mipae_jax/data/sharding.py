"""Shaping batches for the data-parallel steps: per-device splits and per-host slices."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def _leading(tree) -> int:
  sizes = {x.shape[0] for x in jax.tree.leaves(tree)}
  if len(sizes) != 1:
    raise ValueError(f'Every array of the batch needs the same leading (batch) size, found '
                     f'{sorted(sizes)}.')
  return sizes.pop()


def shard_batch(batch, num_devices: int | None = None):
  """Reshapes every leaf `[B, ...]` to `[D, B / D, ...]` for `pmap`-style steps.

  `num_devices` defaults to `jax.local_device_count()`. Works on numpy and jax arrays.
  """
  d = jax.local_device_count() if num_devices is None else num_devices
  b = _leading(batch)
  if b % d:
    raise ValueError(f'Batch size {b} does not split over {d} devices ({b} % {d} = {b % d}); '
                     f'use a batch size that is a multiple of {d} (e.g. {(b // d + 1) * d}).')
  return jax.tree.map(lambda x: x.reshape((d, b // d) + x.shape[1:]), batch)


def host_slice(batch, process_index: int | None = None, process_count: int | None = None):
  """This host's contiguous share `[B / P, ...]` of a global batch `[B, ...]`.

  Every host draws the same global batch from the same key (cheap for the on-device
  stream) and keeps its own slice, so hosts never need to agree on anything else.
  """
  i = jax.process_index() if process_index is None else process_index
  p = jax.process_count() if process_count is None else process_count
  b = _leading(batch)
  if b % p:
    raise ValueError(f'Global batch size {b} does not split over {p} hosts ({b} % {p} = '
                     f'{b % p}); use a multiple of {p}.')
  n = b // p
  return jax.tree.map(lambda x: x[i * n:(i + 1) * n], batch)


def to_global_array(local_batch, mesh: Mesh, axis: str | None = None):
  """Assembles each host's slice `[B / P, ...]` into global arrays `[B, ...]` sharded over
  the mesh axis `axis` (default: the mesh's first axis, `'batch'` on
  `parallel.local_mesh()`), for steps written as `jit` over a `Mesh`."""
  axis = mesh.axis_names[0] if axis is None else axis
  sharding = NamedSharding(mesh, PartitionSpec(axis))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
