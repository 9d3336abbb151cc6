"""Writes a GIF and a PNG filmstrip of a few videos with their factors printed.

  mipae-preview --dataset=moving_dsprites --out=/tmp/preview
  mipae-preview --dataset=moving_mnist --out=DIR --path=~/mnist
  mipae-preview --dataset=mpi3d --out=DIR --path=mpi3d_real.npz
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
from PIL import Image, ImageDraw

from mipae_jax import cli, errors
from mipae_jax.data import make_source


def _to_rgb_uint8(frames: np.ndarray) -> np.ndarray:
  """`[..., H, W, C]` float in [0, 1] -> `[..., H, W, 3]` uint8 (grayscale repeated)."""
  if frames.shape[-1] == 1:
    frames = np.repeat(frames, 3, axis=-1)
  return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def _describe(source, factors, i: int) -> str:
  content = ', '.join(f'{n}={v}' for n, v in zip(source.content_factor_names,
                                                 factors['content'][i, 0], strict=True))
  pose = ' | '.join(
      ','.join(str(v) for v in factors['pose'][i, t]) for t in range(factors['pose'].shape[1]))
  return (f'video {i}: {content}\n  pose ({", ".join(source.pose_factor_names)}) per frame: '
          f'{pose}')


_MARGIN = 2  # Pixels around the text under each row of frames.
_MIN_WIDTH = 640  # A filmstrip of few, small frames still gets readable lines of text.


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int) -> list[str]:
  """`text` broken at spaces into lines no wider than `width` pixels as `draw` measures
  them (a single word wider than that stays whole, on a line of its own)."""
  lines, line = [], ''
  for word in text.split(' '):
    candidate = f'{line} {word}' if line else word
    if line and draw.textbbox((0, 0), candidate)[2] > width:
      lines.append(line)
      line = '  ' + word  # Continuation lines indented, as the pose line is under a video.
    else:
      line = candidate
  return lines + [line]


def filmstrip(videos: np.ndarray, lines: list[str], gap: int = 2) -> Image.Image:
  """A row of frames per video `[N, T, H, W, 3]` uint8, its text `lines[i]` (lines split
  at newlines) under it, wrapped to the strip's width; every text block gets the height
  it measures, and the strip widens for a word wider than it."""
  n, t, h, w, _ = videos.shape
  measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  width = max(t * (w + gap), _MIN_WIDTH)
  blocks = ['\n'.join(row for part in text.split('\n')
                      for row in _wrap(measure, part.strip(), width - 2 * _MARGIN))
            for text in lines]
  # (left, top, right, bottom) of each block drawn at (0, 0): the font's own extent, not a
  # guess of its line height, which the font Pillow loads by default does not match.
  boxes = [measure.multiline_textbbox((0, 0), b) for b in blocks]
  width = max([width] + [box[2] + 2 * _MARGIN for box in boxes])
  heights = [h + box[3] + 2 * _MARGIN for box in boxes]
  strip = Image.new('RGB', (width, sum(heights) + gap * (n - 1)), (255, 255, 255))
  draw = ImageDraw.Draw(strip)
  y0 = 0
  for i in range(n):
    for f in range(t):
      strip.paste(Image.fromarray(videos[i, f]), (f * (w + gap), y0))
    draw.multiline_text((_MARGIN, y0 + h + _MARGIN), blocks[i], fill=(0, 0, 0))
    y0 += heights[i] + gap
  return strip


def write_preview(source, out_dir: str, num_videos: int = 4, seed: int = 0,
                  split: str = 'test', scale: int = 2) -> tuple[str, str]:
  """Writes `preview.gif` (videos side by side) and `filmstrip.png` (a row per video, factor
  text under it) into `out_dir`; returns both paths and prints the factors."""
  os.makedirs(out_dir, exist_ok=True)
  videos, factors = source.sample_batch(jax.random.key(seed), num_videos, split)
  videos = _to_rgb_uint8(np.asarray(videos))  # [N, T, H, W, 3]
  factors = jax.tree.map(np.asarray, factors)
  n, t, h, w, _ = videos.shape
  videos = videos.repeat(scale, axis=2).repeat(scale, axis=3)
  h, w = h * scale, w * scale
  gap = 2
  lines = [_describe(source, factors, i) for i in range(n)]
  print('\n'.join(lines))

  gif_frames = []
  for f in range(t):
    canvas = np.full((h, n * (w + gap), 3), 128, np.uint8)
    for i in range(n):
      canvas[:, i * (w + gap):i * (w + gap) + w] = videos[i, f]
    gif_frames.append(Image.fromarray(canvas))
  gif = os.path.join(out_dir, 'preview.gif')
  gif_frames[0].save(gif, save_all=True, append_images=gif_frames[1:], duration=150, loop=0)

  strip = filmstrip(videos, lines, gap)
  png = os.path.join(out_dir, 'filmstrip.png')
  strip.save(png)
  return gif, png


def data_config(dataset: str, path: str = '', channels: int = 3, rotation: bool = False):
  """The `config.data` of the paper's setting for `dataset` (two objects, 5 + 10 frames)."""
  import ml_collections
  return ml_collections.ConfigDict({
      'name': dataset, 'image_size': 64, 'channels': channels, 'input_frames': 5,
      'target_frames': 10, 'num_objects': 2, 'rotation': rotation, 'path': path,
      'split_seed': 0})


def _build(args):
  c = data_config(args.dataset, args.path, 3 if args.channels is None else args.channels,
                  args.rotation)
  try:
    source = make_source(c)
  except errors.UserError as e:
    # The library names the config field; this command's flag for it is --path.
    message = str(e).replace('config.data.path', '--path')
    message = message.replace('config.data.channels', '--channels')
    raise type(e)(message) from e
  gif, png = write_preview(source, args.out, args.num_videos, args.seed, args.split)
  print(f'wrote {gif} and {png}')


def main(argv=None):
  parser = cli.ArgumentParser(prog='mipae-preview', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--dataset', required=True,
                      choices=['moving_dsprites', 'moving_mnist', 'mpi3d'])
  parser.add_argument('--out', required=True, help='Output directory.')
  parser.add_argument('--path', default='', help='Dataset file or directory (MNIST, MPI3D).')
  parser.add_argument('--num_videos', type=int, default=4)
  parser.add_argument('--channels', type=int, default=None, help='1 or 3 (default: config).')
  parser.add_argument('--rotation', action='store_true', help='dSprites: rotating sprites.')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--split', default='test', choices=['train', 'test'])
  parser.add_argument('--verbose', action='store_true', help='Tracebacks with errors.')
  args = parser.parse_args(argv)
  cli.writes_to(args.out)
  cli.guarded(_build, args)


if __name__ == '__main__':
  main()
