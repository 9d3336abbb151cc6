"""Runs experiments/colab.ipynb headless with tiny parameters, as a fresh runtime would run it.

The notebook runs from a temporary directory outside the repository against a wheel built
from the checkout and installed alone into its own directory (PYTHONPATH), so it must find
everything it needs (configs included) in the installed package, and its install cell
takes the "already importable" branch. The kernel is this interpreter (a temporary
kernelspec pointing at `sys.executable`), so the wheel's dependencies come from this
environment; it inherits JAX_PLATFORMS / XLA_FLAGS from conftest.
"""

import configparser
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO_ROOT, 'experiments', 'colab.ipynb')
KERNEL_NAME = 'mipae-notebook-test'
URL = 'https://github.com/mipae-jax/mipae_jax'

# Appended to the cell tagged `parameters` (papermill's convention): later assignments win.
TINY = {
    'STEPS': 3,
    'LSTM_STEPS': 2,
    'LOG_EVERY': 1,
    'BATCH_SIZE': 8,
    'IMAGE_SIZE': 32,
    'INPUT_FRAMES': 2,
    'TARGET_FRAMES': 2,
    'NF': 8,
}
# Every picture the notebook writes to OUT_DIR.
PICTURES = ('videos.png', 'training_curves.png', 'reconstructions.png', 'analogy.png',
            'prediction.gif')
# The `demo` config's field behind each notebook parameter, whose default it must equal.
DEMO_FIELDS = {
    'STEPS': 'train.ae_steps',
    'LSTM_STEPS': 'train.lstm_steps',
    'LOG_EVERY': 'train.log_every',
    'BATCH_SIZE': 'batch_size',
    'IMAGE_SIZE': 'data.image_size',
    'INPUT_FRAMES': 'data.input_frames',
    'TARGET_FRAMES': 'data.target_frames',
    'NF': 'model.nf',
    'SEED': 'seed',
}


def _write_kernelspec(root) -> str:
  """A kernelspec for this interpreter under `root`; returns the directory for JUPYTER_PATH.

  A user-level or system `python3` kernel may point at another Python; a uniquely named
  spec found first on JUPYTER_PATH cannot.
  """
  kernel_dir = root / 'kernels' / KERNEL_NAME
  kernel_dir.mkdir(parents=True)
  spec = {'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
          'display_name': 'mipae test kernel', 'language': 'python'}
  (kernel_dir / 'kernel.json').write_text(json.dumps(spec))
  return str(root)


def _parameters_cell(nb):
  cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(cells) == 1, 'the notebook needs exactly one cell tagged "parameters"'
  return cells[0]


def _install_cell(nb):
  cells = [c for c in nb.cells if c.cell_type == 'code' and 'MIPAE_URL = ' in c.source]
  assert len(cells) == 1, 'the notebook needs exactly one install cell (setting MIPAE_URL)'
  return cells[0]


def _inject(nb, values: dict) -> None:
  cell = _parameters_cell(nb)
  for name in values:  # An injection into a name the notebook no longer uses tests nothing.
    assert f'\n{name} = ' in '\n' + cell.source, f'parameter {name} missing from the notebook'
  lines = [f'{k} = {v!r}' for k, v in values.items()]
  cell.source += '\n\n# Injected by tests/test_notebook.py\n' + '\n'.join(lines) + '\n'


def _outputs(nb):
  return [out for c in nb.cells if c.cell_type == 'code' for out in c.get('outputs', [])]


def test_notebook_is_valid_and_cleared():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, 'commit the notebook cleared'


def test_notebook_defaults_are_the_demo_config():
  from mipae_jax import configs

  params = {}
  exec(_parameters_cell(nbformat.read(NOTEBOOK, as_version=4)).source, params)
  demo = configs.get('demo')
  for name, field in DEMO_FIELDS.items():
    value = demo
    for part in field.split('.'):
      value = value[part]
    assert params[name] == value, f'{name} = {params[name]!r}, but demo {field} = {value!r}'
  assert not os.path.isabs(params['OUT_DIR'])  # Relative: under the working directory.


def test_notebook_installs_from_the_project_url():
  source = _install_cell(nbformat.read(NOTEBOOK, as_version=4)).source
  assert f"MIPAE_URL = '{URL}'" in source
  setup = configparser.ConfigParser()
  setup.read(os.path.join(REPO_ROOT, 'setup.cfg'))
  assert setup['metadata']['url'] == URL


def test_failed_install_stops_the_notebook(tmp_path):
  """Where mipae_jax is not importable and pip fails, the install cell raises, naming the
  pip command and quoting pip's output: nbclient (and Colab's "Run all") stops there."""
  source = _install_cell(nbformat.read(NOTEBOOK, as_version=4)).source
  missing = (tmp_path / 'no-such-repository').as_uri()  # pip fails at once, offline.
  source = source.replace(f"MIPAE_URL = '{URL}'", f'MIPAE_URL = {missing!r}')
  # -S: without site-packages, where this environment's mipae_jax is; pip (its own
  # process, started from the cell) still has them.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PIP_NO_INDEX='1', PIP_DISABLE_PIP_VERSION_CHECK='1')
  result = subprocess.run([sys.executable, '-S', '-c', source], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0, result.stdout
  assert 'RuntimeError: pip failed (exit status' in result.stderr, result.stderr
  message = result.stderr[result.stderr.index('RuntimeError'):]
  assert f'-m pip install \'mipae_jax @ git+{missing}\'' in message or (
      f"-m pip install 'mipae_jax[cuda12] @ git+{missing}'" in message), message
  assert len(message.splitlines()) > 3, message  # The end of pip's own output.


def test_notebook_runs_with_tiny_parameters(tmp_path, monkeypatch, wheel_site):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  out_dir = tmp_path / 'out'
  _inject(nb, {**TINY, 'OUT_DIR': str(out_dir)})
  run_dir = tmp_path / 'run'  # The working directory: outside the repository.
  run_dir.mkdir()
  assert not run_dir.resolve().is_relative_to(REPO_ROOT)

  monkeypatch.setenv('JUPYTER_PATH', _write_kernelspec(tmp_path / 'jupyter'))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('XLA_FLAGS', os.environ.get('XLA_FLAGS', '--xla_backend_optimization_level=0'))
  monkeypatch.setenv('PYTHONPATH', str(wheel_site))  # The wheel only, not the repository.

  client = nbclient.NotebookClient(
      nb, kernel_name=KERNEL_NAME, timeout=240, startup_timeout=60,
      resources={'metadata': {'path': str(run_dir)}})
  t0 = time.time()
  client.execute()  # Raises CellExecutionError, with the cell and traceback, on any error.
  print(f'notebook ran in {time.time() - t0:.1f}s')

  outputs = _outputs(nb)
  assert not [o for o in outputs if o.output_type == 'error']
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'already importable' in text and 'installing nothing' in text, text
  imported = re.search(r'^mipae_jax (?:\S+ )?from (.+)$', text, re.MULTILINE)
  assert imported, text
  package = pathlib.Path(imported.group(1)).resolve()
  assert package.is_relative_to(wheel_site.resolve()), package
  assert not package.is_relative_to(REPO_ROOT), package

  mimes = [m for o in outputs if o.output_type in ('display_data', 'execute_result')
           for m in o.get('data', {})]
  # Data preview, loss curves, reconstructions, analogy grid; the predicted video.
  assert mimes.count('image/png') >= 4, mimes
  assert 'image/gif' in mimes, mimes
  assert f'step {TINY["STEPS"]:5d} | loss' in text, text
  assert 'lstm loss' in text, text
  for name in PICTURES:
    assert (out_dir / name).stat().st_size > 0, name
