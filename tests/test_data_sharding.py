"""Batch shaping for data-parallel steps."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from mipae_jax.data import sharding


def test_shard_batch():
  batch = {'v': np.arange(24).reshape(12, 2), 'f': np.arange(12)}
  s = sharding.shard_batch(batch, 4)
  assert s['v'].shape == (4, 3, 2) and s['f'].shape == (4, 3)
  np.testing.assert_array_equal(s['f'][1], [3, 4, 5])
  with pytest.raises(ValueError, match=r'Batch size 12 does not split over 5 devices '
                                       r'\(12 % 5 = 2\).*e.g. 15'):
    sharding.shard_batch(batch, 5)
  with pytest.raises(ValueError, match=r'same leading .*found \[3, 12\]'):
    sharding.shard_batch({'a': np.zeros(3), 'b': np.zeros(12)}, 1)
  d = jax.local_device_count()
  assert sharding.shard_batch(np.zeros((2 * d, 3))).shape == (d, 2, 3)


def test_host_slice():
  batch = (np.arange(8), np.arange(16).reshape(8, 2))
  a = sharding.host_slice(batch, 1, 4)
  np.testing.assert_array_equal(a[0], [2, 3])
  np.testing.assert_array_equal(np.concatenate(
      [sharding.host_slice(batch, i, 4)[1] for i in range(4)]), batch[1])
  np.testing.assert_array_equal(sharding.host_slice(batch)[0], batch[0])  # One host here.
  with pytest.raises(ValueError, match=r'Global batch size 8 does not split over 3 hosts'):
    sharding.host_slice(batch, 0, 3)


def test_to_global_array():
  mesh = Mesh(np.array(jax.devices()), ('data',))
  n = 2 * len(jax.devices())
  g = sharding.to_global_array({'x': np.arange(n * 3).reshape(n, 3)}, mesh)
  assert g['x'].shape == (n, 3)
  np.testing.assert_array_equal(np.asarray(g['x']), np.arange(n * 3).reshape(n, 3))
  # The default axis is the mesh's own: the train steps' 'batch' on parallel's mesh.
  from mipae_jax import parallel
  g = sharding.to_global_array({'x': np.zeros((n, 3))}, parallel.local_mesh())
  assert g['x'].sharding.spec == PartitionSpec(parallel.AXIS)
  assert len(g['x'].sharding.device_set) == len(jax.devices())
