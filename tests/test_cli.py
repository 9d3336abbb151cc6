"""The entry points refuse bad input in one line (exit status 2), tracebacks on request."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers.launch import COMPILE_FLAGS

from mipae_jax import cli, config_record, errors
from mipae_jax.configs import tiny
from mipae_jax.data import preview

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module, *args, env=None, timeout=120):
  base = {k: v for k, v in os.environ.items() if k != cli.VERBOSE_ENV}
  # The suite's XLA_FLAGS (4 devices, level 0): the tools then run the programs this
  # worker's other tiny runs compiled, found in its compilation cache.
  flags = os.environ.get('XLA_FLAGS', '--xla_backend_optimization_level=0')
  env = {**base, 'XLA_FLAGS': flags, **(env or {})}
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def one_line(out) -> str:
  """The refusal: stderr less absl's/JAX's informational lines, asserted to be one line."""
  lines = [x for x in out.stderr.splitlines() if x.strip() and not x.startswith(('I1', 'W1'))]
  assert len(lines) == 1, out.stderr
  assert 'Traceback' not in out.stderr
  return lines[0]


# ------------------------------------------------------------- In-process config checks.


def test_config_file_problems_are_named(tmp_path):
  with pytest.raises(errors.ConfigError, match=r"config file 'nope\.py' not found"):
    cli.load_config_file('nope.py')
  (tmp_path / 'empty.py').write_text('x = 1\n')
  with pytest.raises(errors.ConfigError, match=r'defines no get_config\(\)'):
    cli.load_config_file(str(tmp_path / 'empty.py'))
  (tmp_path / 'broken.py').write_text('def get_config(:\n')
  with pytest.raises(errors.ConfigError, match=r'fails to import: SyntaxError'):
    cli.load_config_file(str(tmp_path / 'broken.py'))
  c = cli.load_config_file('dsprites:drnet')
  assert c.loss.name == 'drnet'


def test_unknown_fields_and_malformed_values_are_named():
  c = tiny.get_config()
  with pytest.raises(errors.ConfigError, match=r"no field 'optim\.lrr' \(optim has: b1, b2, "
                                               r'eps, lr\)\. Did you mean optim\.lr\?'):
    cli.field_value(c, 'optim.lrr')
  with pytest.raises(errors.ConfigError, match=r"no field 'nope' \(the config has: "):
    cli.field_value(c, 'nope')
  with pytest.raises(errors.ConfigError, match=r"eval\.seed='\(1,' is not a value of the "
                                               r"field's type \(int, now 1234\)"):
    cli.parse_value('eval.seed', '(1,', 1234)
  with pytest.raises(errors.ConfigError, match=r'expected a int .* found a str'):
    cli.parse_value('eval.seed', "'x'", 1234)
  assert cli.parse_value('optim.lr', '1', 2e-3) == 1.0
  assert cli.parse_value('model.skips', 'true', False) is True
  assert cli.parse_value('data.path', '/x', '') == '/x'


# --------------------------------------------------------------- The commands themselves.


@pytest.mark.parametrize('args,message', [
    (['--config=nope.py'], r"ConfigError: config file 'nope.py' not found"),
    (['--config=README.md'], r"ConfigError: config file 'README.md' is not a Python file"),
    (['--config=tiny', '--config.nope=1'],
     r"ConfigError: config has no field 'nope'"),
    (['--config=tiny', '--config.eval.seed=(1,'],
     r"ConfigError: --config.eval.seed='\(1,' is not a value of the field's type"),
    (['--config=tiny', '--config.optim.lr=nan'],
     r'ConfigError: config.optim.lr=nan is not allowed: expected a finite number'),
    (['--config=tiny', '--config.data.name=moving_mnist',
      '--config.data.path=/nope'],
     r"DataNotFoundError: config.data.path: '/nope' does not exist"),
])
def test_main_refuses_bad_input_in_one_line_with_status_2(tmp_path, args, message):
  out = run('mipae_jax.commands.train', *args, f'--workdir={tmp_path}/run')
  assert out.returncode == 2, out.stderr[-2000:]
  assert re.match(message, one_line(out)), out.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_verbose_shows_the_traceback(tmp_path):
  args = ['--config=tiny', '--config.optim.lr=nan',
          f'--workdir={tmp_path}/run']
  out = run('mipae_jax.commands.train', *args, '--verbose')
  assert out.returncode != 0 and 'Traceback' in out.stderr and 'ConfigError' in out.stderr
  out = run('mipae_jax.commands.train', *args, env={cli.VERBOSE_ENV: '1'})
  assert 'Traceback' in out.stderr


def _fake_run(tmp_path):
  d = tmp_path / 'run'
  d.mkdir()
  config_record.record_config(str(d), tiny.get_config())
  return d


def test_evaluate_takes_config_eval_overrides_and_refuses_unknown_ones(tmp_path):
  d = _fake_run(tmp_path)
  out = run('mipae_jax.commands.evaluate', f'--workdir={d}', '--config.eval.nope=1')
  assert out.returncode == 2
  assert one_line(out).startswith("ConfigError: config has no field 'eval.nope' (eval has: ")
  out = run('mipae_jax.commands.evaluate', f'--workdir={d}', '--override', 'eval.mig_samplez=1')
  assert out.returncode == 2 and 'Did you mean eval.mig_samples?' in one_line(out)
  # A known field passes the override check and reaches the (missing) autoencoder.
  out = run('mipae_jax.commands.evaluate', f'--workdir={d}', '--config.eval.mig_samples=200')
  assert out.returncode == 2
  assert one_line(out).startswith('NotARunError: No autoencoder checkpoint in ')


def test_evaluate_names_a_truncated_config_record(tmp_path):
  d = _fake_run(tmp_path)
  text = (d / 'config.json').read_text()
  (d / 'config.json').write_text(text[:len(text) // 2])
  out = run('mipae_jax.commands.evaluate', f'--workdir={d}')
  assert out.returncode == 2
  assert 'config.json cannot be read' in one_line(out) and 'truncated?' in one_line(out)


def test_preview_names_its_own_flag(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    preview.main(['--dataset', 'moving_mnist', '--out', str(tmp_path)])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('DataNotFoundError: --path: expected a directory with the MNIST')
  assert 'config.data' not in err and '\n' not in err


# ------------------------------------------------- Damaged data files: what and how to fix.


def test_damaged_data_files_never_suggest_loading_pickles(tmp_path):
  from mipae_jax.data import moving_mnist, mpi3d
  np.save(tmp_path / 'trunc.npy', np.zeros((100, 64, 64, 3), np.uint8))
  with open(tmp_path / 'trunc.npy', 'r+b') as f:
    f.truncate(5000)
  (tmp_path / 'random.npz').write_bytes(os.urandom(4096))
  (tmp_path / 'pickled.npz').write_bytes(b'\x80\x04' + os.urandom(200))
  idx = tmp_path / 'idx'
  idx.mkdir()
  for names in moving_mnist.IDX_FILES.values():
    for name in names:
      (idx / f'{name}.gz').write_bytes(os.urandom(300))
  cases = [
      (lambda: mpi3d.open_images(str(tmp_path / 'trunc.npy')), r'trunc\.npy: cannot be read as '
       r'MPI3D images .*: it is shorter than its header says: truncated'),
      (lambda: mpi3d.open_images(str(tmp_path / 'random.npz')),
       r'random\.npz: cannot be read as MPI3D images .*: it is not a zip archive'),
      (lambda: moving_mnist.load_mnist(str(idx)),
       r'train-images-idx3-ubyte\.gz: cannot be read as an MNIST IDX file: it is not a gzip'),
      (lambda: moving_mnist.load_mnist(str(tmp_path / 'pickled.npz')),
       r'pickled\.npz: cannot be read as a mnist\.npz .*: it is not a NumPy'),
  ]
  for fn, message in cases:
    with pytest.raises(errors.DataError, match=message) as e:
      fn()
    assert 'allow_pickle' not in str(e.value) and 'pickle.load' not in str(e.value)
  json.dumps(str(e.value))  # Plain text.


def test_a_full_disk_is_reported_without_tracebacks(tmp_path):
  """A failed save (the file-size limit refuses the write, as a full disk would): Orbax's
  threads log their errors in one line each, TensorStore's callbacks stay quiet, and the
  CheckpointError says what to do; exit status 1 (not bad input)."""
  import resource

  def limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))

  # The tool's own compilation cache (under MIPAE_CACHE_DIR) fails to write too: its
  # warnings must not reach the output either.
  env = {k: v for k, v in os.environ.items()
         if k not in (cli.VERBOSE_ENV, 'JAX_COMPILATION_CACHE_DIR')}
  env['XLA_FLAGS'] = COMPILE_FLAGS
  out = subprocess.run(
      [sys.executable, '-m', 'mipae_jax.commands.train', '--config=tiny',
       f'--workdir={tmp_path}/run'], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=180, preexec_fn=limit)
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) <= 10, out.stderr
  assert any(x.startswith('CheckpointError: saving checkpoint step 1') and
             '(OS error 27: File too large)' in x for x in lines)
  assert any(x.startswith('To fix: free disk space') for x in lines)


def test_a_failed_saves_leftovers_stay_out_of_the_output():
  """What a failed Orbax save leaves behind, collected when the tool exits: futures
  whose exception nobody read (asyncio logs 'Future/_GatheringFuture/Task exception was
  never retrieved', each with a traceback) and TensorStore's unawaited write coroutines
  (a RuntimeWarning each). After `setup_logging` none of it is printed; other asyncio
  errors and other warnings still are."""
  script = textwrap.dedent("""
      import asyncio, gc, logging, sys, warnings
      from mipae_jax import cli
      cli.setup_logging()
      async def write_fragment(): pass
      coroutine = write_fragment()
      del coroutine
      loop = asyncio.new_event_loop()
      for make in (loop.create_future, lambda: asyncio.gather(loop.create_future())):
        future = make()
        future.set_exception(ValueError('zarr write failed'))
        del future
      gc.collect()
      logging.getLogger('asyncio').error('kept: another asyncio error')
      warnings.warn('kept: another warning', RuntimeWarning)
      """)
  env = {k: v for k, v in os.environ.items() if k != cli.VERBOSE_ENV}
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert 'never retrieved' not in out.stderr and 'never awaited' not in out.stderr, out.stderr
  assert 'tracemalloc' not in out.stderr, out.stderr
  assert 'kept: another asyncio error' in out.stderr
  assert 'kept: another warning' in out.stderr


# ------------------------------------------------------- The installed tools, in-process.

TOOLS = {
    'mipae-train': ('mipae_jax.commands.train', '--workdir'),
    'mipae-evaluate': ('mipae_jax.commands.evaluate', '--workdir'),
    'mipae-study': ('mipae_jax.commands.study', '--workdir'),
    'mipae-convert': ('mipae_jax.commands.convert', '--checkpoint'),
    'mipae-export': ('mipae_jax.commands.export', '--workdir'),
    'mipae-prepare': ('mipae_jax.data.prepare', '--data_dir'),
    'mipae-preview': ('mipae_jax.data.preview', '--dataset'),
}


def _tool_main(tool):
  import configparser
  import importlib

  parser = configparser.ConfigParser()
  parser.read(os.path.join(ROOT, 'setup.cfg'))
  scripts = dict(line.split(' = ') for line in
                 parser['options.entry_points']['console_scripts'].strip().splitlines())
  module, function = scripts[tool].split(':')
  assert module == TOOLS[tool][0]
  return getattr(importlib.import_module(module), function)


def _exit_status(main, argv, capsys):
  with pytest.raises(SystemExit) as e:
    status = main(argv)
    if status is not None:  # A tool that returns its status (the console script exits).
      raise SystemExit(status)
  return e.value.code, capsys.readouterr()


@pytest.mark.parametrize('tool', sorted(TOOLS))
def test_every_tool_exits_0_for_help_and_2_for_a_missing_flag_in_one_line(tool, capsys):
  main = _tool_main(tool)
  code, out = _exit_status(main, [tool, '--help'] if 'preview' not in tool and 'study'
                           not in tool else ['--help'], capsys)
  assert code == 0
  assert tool in out.out
  argv = [tool] if 'preview' not in tool and 'study' not in tool else []
  code, out = _exit_status(main, argv, capsys)
  assert code == 2
  lines = [x for x in out.err.splitlines() if x.strip()]
  assert len(lines) == 1 and TOOLS[tool][1] in lines[0], out.err


def test_a_path_with_an_unquoted_space_is_refused_naming_the_stray_parts(tmp_path, capsys):
  """Issue: `--workdir=../wd/my runs/x` trained into `../wd/my` and dropped `runs/x`."""
  from mipae_jax.commands import train
  code, out = _exit_status(
      train.main, ['mipae-train', '--config=tiny', f'--workdir={tmp_path}/my', 'runs/x'],
      capsys)
  assert code == 2
  assert "unexpected argument(s) ['runs/x']" in out.err and 'quoted' in out.err
  assert not os.path.exists(tmp_path / 'my')


def test_the_tools_cache_compiled_programs_unless_told_not_to(monkeypatch, tmp_path):
  import jax

  before = jax.config.jax_compilation_cache_dir
  try:
    monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'theirs'))
    assert cli.enable_compilation_cache() is None  # The user's own setting rules.
    monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR')
    monkeypatch.setenv('MIPAE_XLA_CACHE', '0')
    assert cli.enable_compilation_cache() is None
    monkeypatch.delenv('MIPAE_XLA_CACHE')
    monkeypatch.setenv('MIPAE_CACHE_DIR', str(tmp_path / 'cache'))
    assert cli.enable_compilation_cache() == str(tmp_path / 'cache' / 'xla')
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'cache' / 'xla')
  finally:
    jax.config.update('jax_compilation_cache_dir', before)
