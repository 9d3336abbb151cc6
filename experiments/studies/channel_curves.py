"""Per-channel reconstruction error over training, one panel per run (issue: two sprites).

  python -m experiments.studies.channel_curves --out=docs/study/two_sprites.png \
      workdirs/two-sprites-r1 workdirs/two-sprites-beta0 ...

In RGB Moving dSprites sprite i is drawn into channel i, so a sprite the autoencoder has
dropped shows as a channel whose error stays at the level of an all-black prediction
(about the fraction of the channel's pixels the sprite covers, 1.4% here).
"""

from __future__ import annotations

import argparse
import os

from mipae_jax import logger


def curves(workdir: str) -> dict:
  out = {}
  for r in logger.read_records(workdir):
    if r.get('stage') != 'ae':
      continue
    for k, v in r.items():
      if k.startswith('recon_loss_ch'):
        out.setdefault(k, {})[r['step']] = v
  return {k: sorted(v.items()) for k, v in out.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('workdirs', nargs='+')
  args = parser.parse_args(argv)
  from mipae_jax import visualize

  n = len(args.workdirs)
  cols = min(n, 5)
  rows = -(-n // cols)
  fig = visualize.figure(figsize=(3.6 * cols, 3 * rows))
  axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
  for ax in axes.flat[n:]:
    ax.set_visible(False)
  for ax, wd in zip(axes.flat[:n], args.workdirs, strict=True):
    for name, pts in curves(wd).items():
      if name == 'recon_loss_ch2':
        continue  # Two sprites: channel 2 is empty.
      ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f'sprite {name[-1]}')
    ax.set_title(os.path.basename(os.path.normpath(wd)), fontsize=9)
    ax.set_xlabel('autoencoder step')
    ax.grid(alpha=0.3)
  for row in axes:
    row[0].set_ylabel('reconstruction MSE of the channel')
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
