"""True frames against their reconstructions, and an analogy grid, from a workdir's newest
autoencoder checkpoint (issue: two sprites).

  python -m experiments.studies.reconstructions --workdir=workdirs/two-sprites-fg10 \
      --out=docs/study/two_sprites/reconstruction_fg10.png [--analogy=PNG] [--videos=3]

The test videos are drawn with `config.eval.seed`, so every run shows the same ones.
Rows of the reconstruction picture alternate: a video's frames, then
`D(E_c(x[0]), E_p(x[t]))` for each t. The analogy grid renders the content of each test
video's first frame (column 0) with the poses of one video's frames (row 0).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from mipae_jax import config_record, data, models, predict, runs, train, visualize


def pictures(workdir: str, num_videos: int = 3):
  """(rows [2V, T, H, W, C] alternating true / reconstructed, analogy grid
  [V + 1, T + 1, H, W, C]) at the newest autoencoder checkpoint of `workdir`."""
  config = config_record.load_config(workdir)
  ae = train.autoencoder_variables(runs.restore_autoencoder(config, workdir))
  nets = models.networks(config)
  source = data.make_source(config.data)
  videos = np.asarray(source.jit_sample_batch(jax.random.key(config.eval.seed),
                                              num_videos + 1, 'test')[0])
  recon = np.asarray(jax.jit(lambda a, v: predict.reconstruct(nets, a, v))(ae, videos))
  rows = np.stack([videos[:num_videos], recon[:num_videos]], 1).reshape(
      (2 * num_videos,) + videos.shape[1:])
  pose_video = videos[num_videos]
  grid = np.asarray(predict.analogies(nets, ae, videos[:num_videos, 0], pose_video))
  top = np.concatenate([np.zeros_like(pose_video[:1]), pose_video])[None]
  body = np.concatenate([videos[:num_videos, :1], grid], axis=1)
  return rows, np.concatenate([top, body])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', required=True)
  p.add_argument('--out', required=True, help='PNG of true and reconstructed videos')
  p.add_argument('--analogy', default='', help='PNG of the analogy grid (optional)')
  p.add_argument('--videos', type=int, default=3)
  args = p.parse_args(argv)
  rows, grid = pictures(args.workdir, args.videos)
  visualize.save_filmstrip(rows, args.out, ['true', 'recon'] * args.videos)
  print(f'wrote {args.out}')
  if args.analogy:
    visualize.save_image_grid(grid, args.analogy)
    print(f'wrote {args.analogy}')


if __name__ == '__main__':
  main()
