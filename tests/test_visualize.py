"""Every picture writer produces a file PIL can open, with the expected size."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from mipae_jax import visualize as vis


def _video(t=4, h=16, w=16, c=3, seed=0):
  return np.random.default_rng(seed).random((t, h, w, c)).astype(np.float32)


def test_to_uint8_clips_and_rounds():
  out = vis.to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0]))
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, [0, 0, 128, 255, 255])
  u = np.arange(5, dtype=np.uint8)
  assert vis.to_uint8(u) is u


@pytest.mark.parametrize('channels', [1, 3])
def test_save_gif(tmp_path, channels):
  path = tmp_path / 'sub' / 'pred.gif'
  vis.save_gif(_video(c=channels), str(path), fps=5)
  with Image.open(path) as im:
    assert im.format == 'GIF' and im.n_frames == 4
    assert im.size == (16 + 2 * vis.PAD, 16 + 2 * vis.PAD)


def test_save_gif_rows(tmp_path):
  rows = np.stack([_video(), _video(seed=1)])  # [R=2, T=4, 16, 16, 3]
  vis.save_gif(rows, str(tmp_path / 'rows.gif'))
  with Image.open(tmp_path / 'rows.gif') as im:
    assert im.n_frames == 4
    assert im.size == (16 + 2 * vis.PAD, 2 * 16 + 3 * vis.PAD)


@pytest.mark.parametrize('channels', [1, 3])
def test_save_filmstrip(tmp_path, channels):
  rows = np.stack([_video(c=channels), _video(c=channels, seed=1)])
  vis.save_filmstrip(rows, str(tmp_path / 'strip.png'))
  with Image.open(tmp_path / 'strip.png') as im:
    assert im.size == (4 * 16 + 5 * vis.PAD, 2 * 16 + 3 * vis.PAD)
  vis.save_filmstrip(rows, str(tmp_path / 'labelled.png'), row_labels=['true', 'pred'])
  with Image.open(tmp_path / 'labelled.png') as im:
    assert im.size == (4 * 16 + 5 * vis.PAD + vis._LABEL_WIDTH, 2 * 16 + 3 * vis.PAD)


def test_save_image_grid_blank_corner(tmp_path):
  grid = np.ones((3, 4, 8, 8, 1), np.float32)  # white cells
  path = tmp_path / 'analogy.png'
  vis.save_image_grid(grid, str(path))
  with Image.open(path) as im:
    assert im.size == (4 * 8 + 5 * vis.PAD, 3 * 8 + 4 * vis.PAD)
    arr = np.asarray(im.convert('RGB'))
  corner = arr[vis.PAD:vis.PAD + 8, vis.PAD:vis.PAD + 8]
  cell = arr[vis.PAD:vis.PAD + 8, 2 * vis.PAD + 8:2 * vis.PAD + 16]
  assert np.all(corner == vis._PAD_VALUE) and np.all(cell == 255)


def test_plot_per_step(tmp_path):
  t = 10
  curves = {'MIPAE': (np.linspace(0.9, 0.6, t), np.full(t, 0.02)),
            'DRNET': (np.linspace(0.88, 0.5, t), np.full(t, 0.03))}
  path = tmp_path / 'ssim.png'
  vis.plot_per_step(curves, str(path), ylabel='SSIM')
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.size == (500, 350)


def test_bad_shapes_raise(tmp_path):
  with pytest.raises(ValueError):
    vis.save_filmstrip(_video(), str(tmp_path / 'x.png'))  # missing the row axis
  with pytest.raises(ValueError):
    vis.save_gif(_video(c=2), str(tmp_path / 'x.gif'))


def test_the_library_leaves_matplotlibs_backend_alone(tmp_path):
  """A notebook's figures show through its own backend (Colab's inline one): importing
  the library (its pipeline, evaluation and study modules) and drawing a plot neither
  switch it nor load pyplot (a fresh process, since this one may have pyplot loaded)."""
  code = textwrap.dedent(f"""
      import sys
      import matplotlib
      matplotlib.use('svg')  # Any backend the user chose.
      import mipae_jax, mipae_jax.pipeline, mipae_jax.evaluate, mipae_jax.study
      from mipae_jax import visualize
      assert 'matplotlib.pyplot' not in sys.modules, 'pyplot loaded on import'
      assert 'matplotlib.figure' not in sys.modules, 'matplotlib loaded before any plot'
      visualize.plot_per_step({{'a': ([0.9, 0.8], [0.01, 0.02])}}, {str(tmp_path / 'p.png')!r},
                              'SSIM')
      assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()
      assert 'matplotlib.pyplot' not in sys.modules, 'pyplot loaded by a plot'
      print('ok')
      """)
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=300)
  assert out.stdout.strip() == 'ok', out.stderr[-3000:]
  with Image.open(tmp_path / 'p.png') as im:
    assert im.format == 'PNG'
