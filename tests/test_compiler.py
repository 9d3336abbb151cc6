"""The project's executables compile with its CPU options; plain `jax.jit` does not."""

import jax
import jax.numpy as jnp
import numpy as np

from mipae_jax import compiler, cpu_kernels


def _conv_hlo(jit):
  # Large enough for XLA's cost model to offload it (compiled only, never run).
  x = jax.ShapeDtypeStruct((20, 32, 32, 64), jnp.float32)
  k = jax.ShapeDtypeStruct((4, 4, 64, 128), jnp.float32)
  return jit(cpu_kernels.conv4x4_down).lower(x, k).compile().as_text()


def test_cpu_convolutions_skip_ynnpack_only_in_our_executables():
  assert jax.default_backend() == 'cpu'
  assert compiler.options() == compiler.CPU_OPTIONS
  assert compiler.options('gpu') is None
  # The default pipeline offloads this convolution to YNNPACK; ours keeps it in XLA.
  assert '__ynn_fusion' in _conv_hlo(jax.jit)
  assert '__ynn_fusion' not in _conv_hlo(compiler.jit)


def test_options_do_not_change_results():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 16, 16, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(4, 4, 5, 7)), jnp.float32)
  np.testing.assert_allclose(compiler.jit(cpu_kernels.conv4x4_down)(x, k),
                             jax.jit(cpu_kernels.conv4x4_down)(x, k), rtol=1e-5, atol=1e-5)


def test_programs_built_for_an_equal_config_are_reused_and_never_retraced():
  """`parallel.make_train_step` and the train states' pieces are memoised on the config's
  values: a second stage of an equal config (a resumed run, a notebook cell run again)
  calls the program already traced; another config gets its own; a change to the
  caller's config object after building never reaches the built program. (The LSTM's
  step on cached codes: the same machinery as the autoencoder's, quick to compile.)"""
  from mipae_jax import parallel, train
  from mipae_jax.configs import tiny

  def config(**model):
    c = tiny.get_config()
    c.model.lstm_hidden = 12  # Programs of this test only.
    c.model.update(model)
    return c

  step = parallel.make_train_step(config(), 'lstm_codes', mode='jit', donate=False)
  assert parallel.make_train_step(config(), 'lstm_codes', mode='jit', donate=False) is step
  assert parallel.make_train_step(config(), 'lstm_codes', mode='jit') is not step
  assert train.adam(config().lstm_optim) is train.adam(config().lstm_optim)
  b, c = config(), config()
  codes = {'h_c': jnp.zeros((b.batch_size, b.model.content_dim), jnp.float32),
           'h_p': jnp.zeros((b.batch_size, 4, b.model.pose_dim), jnp.float32)}
  # States from two calls with equal configs: the same static structure, one trace.
  for seed, cfg in ((0, b), (1, c)):
    step(train.create_lstm_state(cfg, jax.random.key(seed)), codes, jax.random.key(2))
  assert step._cache_size() == 1
  # A change to the caller's config after building, before the first trace: the program
  # still builds the LSTM it was built for (a pose_dim of 5 would not fit these codes).
  fresh = config(pose_dim=3, content_dim=16)
  fresh.lstm_optim.lr = 1e-3  # Not built before.
  late = parallel.make_train_step(fresh, 'lstm_codes', mode='jit', donate=False)
  assert late is not step
  state = train.create_lstm_state(fresh, jax.random.key(0))
  fresh.model.pose_dim = 5
  late(state, codes, jax.random.key(2))
  assert late._cache_size() == 1
  assert parallel.make_train_step(fresh, 'lstm_codes', mode='jit', donate=False) is not late
  assert compiler.config_fingerprint(fresh) != compiler.config_fingerprint(b)
  # A value with no canonical form (here an array in the config): built, never shared.
  odd = config()
  odd.extra = np.zeros(3)
  assert parallel.make_train_step(odd, 'lstm_codes', mode='jit') is not \
      parallel.make_train_step(odd, 'lstm_codes', mode='jit')


def test_a_state_built_first_inside_a_trace_is_built_again_outside_it():
  """A restore first builds a config's pieces inside `jax.eval_shape`; the memoised
  builders keep no value of that trace, so a real state is built afterwards."""
  from mipae_jax import train
  from mipae_jax.configs import tiny

  config = tiny.get_config()
  config.model.lstm_hidden = 10  # Built here first.
  shapes = jax.eval_shape(lambda key: train.create_lstm_state(config, key), jax.random.key(0))
  state = train.create_lstm_state(config, jax.random.key(0))
  assert jax.tree.map(lambda x: x.shape, jax.tree.leaves(state)) == \
      jax.tree.map(lambda x: x.shape, jax.tree.leaves(shapes))
