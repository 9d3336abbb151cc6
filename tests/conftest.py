"""Test set-up: JAX sees 4 CPU devices (set before JAX is imported anywhere)."""

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest
from helpers.launch import COMPILE_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests run tiny programs, where XLA's compile time dominates (helpers.launch.COMPILE_FLAGS).
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count=4 {COMPILE_FLAGS}')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One BLAS thread per process (set before numpy loads OpenBLAS, and inherited by every
# worker and subprocess): OpenBLAS threads spin while they wait, so beside another busy
# process (the other pytest-xdist worker) a small least-squares fit of the probe takes an
# order of magnitude longer with two threads than with one (BENCHMARKS.md).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

# One persistent compilation cache for the session and every subprocess it starts: many
# tests build the same tiny programs again (a second run of a workdir, a resumed stage, a
# study's seeds), and a cached executable computes the same bits as a fresh compile.
# Fresh per session, so nothing carries over between runs of the suite.
# What evaluation trains once and caches (the analogy classifier) stays in the session.
if 'MIPAE_CACHE_DIR' not in os.environ:
  _mipae_cache = tempfile.mkdtemp(prefix='mipae-cache-')
  atexit.register(shutil.rmtree, _mipae_cache, ignore_errors=True)
  os.environ['MIPAE_CACHE_DIR'] = _mipae_cache

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='mipae-xla-cache-')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
# `make test` runs one pytest-xdist worker per core; each keeps a cache of its own, since
# JAX writes an entry without a lock and one worker could read another's half-written one.
if os.environ.get('PYTEST_XDIST_WORKER'):
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(
      os.environ['JAX_COMPILATION_CACHE_DIR'], os.environ['PYTEST_XDIST_WORKER'])

FULL_ENV = 'MIPAE_FULL_TESTS'


def pytest_addoption(parser):
  parser.addoption('--full', action='store_true', default=False,
                   help='also run the full-size trials (tests marked `full`: minutes '
                        f'each); {FULL_ENV}=1 does the same. `make test-full` passes it.')


# The files that take longest on 2 cores, longest first (`pytest --durations=0`). pytest-xdist
# (`make test`: --dist loadfile --no-loadscope-reorder) hands out whole files in collection
# order, so these start first and no worker begins a long file while the other has
# nearly finished; the rest follow in their usual order.
LONGEST_FIRST = ('test_multiprocess.py', 'test_probe_mig.py', 'test_study.py',
                 'test_reliability.py', 'test_train.py', 'test_pipeline.py', 'test_losses.py',
                 'test_readme.py', 'test_models.py', 'test_tfds_training.py')


def _file_rank(item) -> int:
  name = item.path.name
  return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
  """Longest files first (LONGEST_FIRST); full-size trials (marked `full`) run only when
  asked: `make test` stays short, and their smaller versions run in it."""
  items.sort(key=_file_rank)  # Stable: each file's tests keep their order.
  if config.getoption('--full') or os.environ.get(FULL_ENV, '') not in ('', '0'):
    return
  skip = pytest.mark.skip(reason=f'a full-size trial: run with --full (or {FULL_ENV}=1, '
                                 'make test-full)')
  for item in items:
    if 'full' in item.keywords:
      item.add_marker(skip)


def _run(cmd, **kwargs) -> str:
  result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **kwargs)
  assert result.returncode == 0, f'{" ".join(cmd)} failed:\n{result.stdout[-4000:]}'
  return result.stdout


@pytest.fixture(scope='session')
def wheel_site(tmp_path_factory) -> pathlib.Path:
  """The checkout built into a wheel and installed without dependencies into a directory
  of its own: a test runs a user's code against that (non-editable) install by putting
  the directory on PYTHONPATH (the dependencies come from this environment); returns it."""
  root = tmp_path_factory.mktemp('wheel')
  # setuptools builds in the source tree (build/, *.egg-info) unless told otherwise; build
  # outside it, so that files left there by an earlier build never reach the wheel and
  # the other users of the working tree see no change.
  extra = root / 'setuptools.cfg'
  extra.write_text(f'[build]\nbuild_base = {root / "build"}\n[egg_info]\negg_base = {root}\n')
  env = {**os.environ, 'DIST_EXTRA_CONFIG': str(extra), 'PIP_DISABLE_PIP_VERSION_CHECK': '1'}
  _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
        '-w', str(root / 'dist'), ROOT], env=env)
  wheels = sorted((root / 'dist').glob('mipae_jax-*.whl'))
  assert len(wheels) == 1, wheels
  site = root / 'site'
  _run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q',
        '--target', str(site), str(wheels[0])], env=env)
  assert (site / 'mipae_jax' / 'configs' / 'demo.py').is_file()
  return site


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory) -> str:
  """A run directory of the tiny config trained 2 autoencoder and 2 LSTM steps (no
  evaluation), shared by the tests that only read a trained run. Copy it to change it."""
  from mipae_jax import config_record, pipeline, workdir
  from mipae_jax.configs import tiny

  path = str(tmp_path_factory.mktemp('tiny_run'))
  config = tiny.get_config()
  workdir.prepare(path)
  config_record.record_config(path, config)
  ae = pipeline.train_autoencoder(config, path)
  pipeline.train_lstm(config, path, ae.state)
  return path
