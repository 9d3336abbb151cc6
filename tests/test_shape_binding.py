"""The decoder-binding diagnostic of RESULTS.md ("Why the demo draws blobs"): its variant
networks draw frames, its oracle codes are what they say, and a short run learns."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.studies import shape_binding
from mipae_jax import models
from mipae_jax.configs import demo


@pytest.fixture
def variants(monkeypatch):
  for name, arch in shape_binding.VARIANTS.items():  # Registered for this test only.
    monkeypatch.setitem(models.ARCHITECTURES, name, arch)


@pytest.mark.parametrize('arch', list(shape_binding.VARIANTS))
def test_variants_draw_frames_from_codes(variants, arch):
  c = demo.get_config()
  c.model.arch, c.model.nf = arch, 4
  nets = models.networks(c)
  x = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3))
  # Jitted: one compiled program per call, not one per operation.
  vc = jax.jit(nets.content_encoder.init)(jax.random.key(1), x)
  z_c, _ = jax.jit(functools.partial(nets.content_encoder.apply, train=False))(vc, x)
  assert z_c.shape == (2, c.model.content_dim)
  z_p = jnp.zeros((2, c.model.pose_dim))
  vd = jax.jit(nets.decoder.init)(jax.random.key(2), z_c, z_p)
  frames = jax.jit(functools.partial(nets.decoder.apply, train=False))(vd, z_c, z_p)
  assert frames.shape == (2, 64, 64, 3)
  assert bool(jnp.all((frames > 0) & (frames < 1)))
  assert not nets.takes_skips


def test_variants_refuse_skips(variants):
  c = demo.get_config()
  c.model.arch, c.model.skips = 'film', True
  assert 'skip' in models.architecture('film').check(c.model, c.data)


def test_one_hot_codes_one_block_per_factor():
  labels = np.array([[0, 5, 39], [2, 0, 1]])
  z = shape_binding._one_hot(labels, 128)
  assert z.shape == (2, 128)
  assert set(np.unique(z)) == {-1.0, 1.0}
  assert (z == 1).sum(1).tolist() == [3, 3]  # One hot entry per factor.
  assert z[0, 0] == 1 and z[1, 2] == 1 and z[0, 3 + 5] == 1 and z[1, 3 + 6 + 1] == 1


def test_position_code_spans_minus_one_to_one():
  z = shape_binding._position_code(np.array([[0, 31], [31, 0], [0, 0]]), 5)
  np.testing.assert_allclose(z, [[-1, 1, 0, 0, 0], [1, -1, 0, 0, 0], [-1, -1, 0, 0, 0]])


def test_a_short_diagnostic_run_learns():
  # 40 steps are what the assertion needs: the loss is at 0.53 of its first value there
  # (0.15 of it at 100 steps).
  res = shape_binding.diagnose('dcgan', steps=40, shift=4, frames=1500, nf=4,
                               log_every=10)
  first, last = res['losses'][0][1], res['losses'][-1][1]
  assert last < 0.8 * first, res['losses']
  assert res['recon'].shape == res['frames'].shape == (16, 64, 64, 3)
  assert np.isfinite(res['test_mse'])
