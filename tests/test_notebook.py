"""Runs experiments/colab.ipynb headless with tiny parameters, so the notebook never rots.

The kernel is this interpreter (a temporary kernelspec pointing at `sys.executable`), so
it sees the same installed packages and inherits JAX_PLATFORMS / XLA_FLAGS from conftest.
"""

import json
import os
import sys
import time

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO_ROOT, 'experiments', 'colab.ipynb')
KERNEL_NAME = 'mipae-notebook-test'

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


def _inject(nb, values: dict) -> None:
  cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(cells) == 1, 'the notebook needs exactly one cell tagged "parameters"'
  cell = cells[0]
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


def test_notebook_runs_with_tiny_parameters(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  out_dir = tmp_path / 'out'
  _inject(nb, {**TINY, 'OUT_DIR': str(out_dir)})

  monkeypatch.setenv('JUPYTER_PATH', _write_kernelspec(tmp_path / 'jupyter'))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('XLA_FLAGS', os.environ.get('XLA_FLAGS', '--xla_backend_optimization_level=0'))
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      p for p in (REPO_ROOT, os.environ.get('PYTHONPATH')) if p))

  client = nbclient.NotebookClient(
      nb, kernel_name=KERNEL_NAME, timeout=240, startup_timeout=60,
      resources={'metadata': {'path': REPO_ROOT}})
  t0 = time.time()
  client.execute()  # Raises CellExecutionError, with the cell and traceback, on any error.
  print(f'notebook ran in {time.time() - t0:.1f}s')

  outputs = _outputs(nb)
  assert not [o for o in outputs if o.output_type == 'error']
  mimes = [m for o in outputs if o.output_type in ('display_data', 'execute_result')
           for m in o.get('data', {})]
  assert mimes.count('image/png') >= 3, mimes  # Data preview, loss curves, analogy grid.
  assert 'image/gif' in mimes, mimes  # The predicted video.
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert f'step {TINY["STEPS"]:5d} | loss' in text, text
  assert 'lstm loss' in text, text
  assert (out_dir / 'analogy.png').stat().st_size > 0
  assert (out_dir / 'prediction.gif').stat().st_size > 0
