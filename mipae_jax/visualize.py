"""Picture writers for the evaluation report: numpy arrays in, image files out.

Frames are float in [0, 1] (or uint8), channels-last, C = 1 (grayscale) or C = 3 (RGB).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Pixels between frames / rows, and the grey that fills gaps and blank cells.
PAD = 2
_PAD_VALUE = 128
# Width reserved for row labels in filmstrips.
_LABEL_WIDTH = 72


def to_uint8(x) -> np.ndarray:
  """Float in [0, 1] (clipped) or uint8 -> uint8, same shape."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x
  return np.round(np.clip(np.nan_to_num(x.astype(np.float64)), 0.0, 1.0) * 255).astype(
      np.uint8)


def _rgb(x: np.ndarray) -> np.ndarray:
  """[..., H, W, C] with C in {1, 3} -> uint8 [..., H, W, 3]."""
  x = to_uint8(x)
  if x.shape[-1] == 1:
    return np.repeat(x, 3, axis=-1)
  if x.shape[-1] != 3:
    raise ValueError(f'need 1 or 3 channels, got {x.shape[-1]}')
  return x


def _mosaic(cells: np.ndarray, blank: np.ndarray | None = None) -> np.ndarray:
  """cells [R, Cols, H, W, 3] uint8 -> [R*(H+PAD)+PAD, Cols*(W+PAD)+PAD, 3] with gaps.

  blank [R, Cols] bool: cells left as padding grey.
  """
  r, c, h, w, _ = cells.shape
  out = np.full((r * (h + PAD) + PAD, c * (w + PAD) + PAD, 3), _PAD_VALUE, np.uint8)
  for i in range(r):
    for j in range(c):
      if blank is not None and blank[i, j]:
        continue
      y, x = PAD + i * (h + PAD), PAD + j * (w + PAD)
      out[y:y + h, x:x + w] = cells[i, j]
  return out


def _ensure_dir(path: str) -> None:
  d = os.path.dirname(os.fspath(path))
  if d:
    os.makedirs(d, exist_ok=True)


def save_gif(frames, path: str, fps: float = 4.0) -> None:
  """Animated GIF. frames [T, H, W, C], or rows [R, T, H, W, C] stacked vertically."""
  frames = np.asarray(frames)
  if frames.ndim == 4:
    frames = frames[None]
  if frames.ndim != 5:
    raise ValueError(f'need [T, H, W, C] or [R, T, H, W, C], got {frames.shape}')
  rgb = _rgb(frames)  # [R, T, H, W, 3]
  # One mosaic per time step: rows become one column of frames.
  steps = [_mosaic(rgb[:, t][:, None]) for t in range(rgb.shape[1])]
  images = [Image.fromarray(s) for s in steps]
  _ensure_dir(path)
  images[0].save(path, save_all=True, append_images=images[1:],
                 duration=int(round(1000 / fps)), loop=0)


def save_filmstrip(rows, path: str, row_labels: Sequence[str] | None = None) -> None:
  """PNG filmstrip: rows [R, T, H, W, C], one row of frames per entry of R."""
  rows = np.asarray(rows)
  if rows.ndim != 5:
    raise ValueError(f'need [R, T, H, W, C], got {rows.shape}')
  img = _mosaic(_rgb(rows))
  if row_labels is not None:
    if len(row_labels) != rows.shape[0]:
      raise ValueError('one label per row')
    h = rows.shape[2]
    canvas = Image.new('RGB', (img.shape[1] + _LABEL_WIDTH, img.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (_LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(row_labels):
      draw.text((4, PAD + i * (h + PAD) + h // 2 - 5), str(label)[:12], fill=(0, 0, 0))
    _ensure_dir(path)
    canvas.save(path)
    return
  _ensure_dir(path)
  Image.fromarray(img).save(path)


def save_image_grid(images, path: str, blank_corner: bool = True) -> None:
  """PNG grid: images [R, Cols, H, W, C].

  For analogy grids: row 0 holds the pose sources, column 0 the content sources, and
  cell (i, j) the decoding of content i with pose j; cell (0, 0) is left blank.
  """
  images = np.asarray(images)
  if images.ndim != 5:
    raise ValueError(f'need [R, Cols, H, W, C], got {images.shape}')
  blank = np.zeros(images.shape[:2], bool)
  blank[0, 0] = blank_corner
  _ensure_dir(path)
  Image.fromarray(_mosaic(_rgb(images), blank)).save(path)


def figure(**kwargs):
  """A matplotlib Figure of its own (`matplotlib.figure.Figure(**kwargs)`), drawn and
  saved without pyplot: the process's backend (a notebook's inline one) stays as it is,
  nothing needs closing, and matplotlib is imported only when a plot is drawn."""
  from matplotlib.figure import Figure
  return Figure(**kwargs)


def plot_per_step(curves: Mapping[str, tuple], path: str, ylabel: str,
                  xlabel: str = 'future step', title: str | None = None,
                  first_step: int = 1):
  """Line plot with 95% bands. curves: name -> (mean [T], ci [T]); steps from first_step.
  Returns the saved Figure."""
  from matplotlib.ticker import MaxNLocator
  fig = figure(figsize=(5, 3.5), dpi=100)
  ax = fig.subplots()
  for name, (mean, ci) in curves.items():
    mean, ci = np.asarray(mean, np.float64), np.asarray(ci, np.float64)
    t = np.arange(first_step, first_step + len(mean))
    ax.plot(t, mean, marker='o', markersize=3, label=name)
    ax.fill_between(t, mean - ci, mean + ci, alpha=0.25)
  # Steps are whole frames: without this a few steps get ticks like 1.5 and 2.5.
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  _ensure_dir(path)
  fig.savefig(path)
  return fig
