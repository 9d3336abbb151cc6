"""How large the MI (or adversarial) term is next to the reconstruction loss, per run.

  python -m experiments.studies.loss_scale [--last=500] WORKDIR [WORKDIR ...]

For each run: over its last `--last` logged autoencoder steps, the mean reconstruction
loss, the mean of `beta x mi_loss` (the term as it enters the objective), their ratio, and
the critic's MI estimate. Reads `config.json` (beta) and `metrics.jsonl`.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from mipae_jax import config_record, logger


def scale(workdir: str, last: int = 500) -> dict:
  config = config_record.load_config(workdir)
  records = [r for r in logger.read_records(workdir) if r.get('stage') == 'ae']
  if not records:
    raise SystemExit(f'{workdir}: no autoencoder records in metrics.jsonl')
  end = records[-1]['step']
  tail = [r for r in records if r['step'] > end - last]
  beta = float(config.loss.beta)
  recon = float(np.mean([r['recon_loss'] for r in tail]))
  term = float(np.mean([beta * r['mi_loss'] for r in tail]))
  return {'run': os.path.basename(os.path.normpath(workdir)), 'loss': config.loss.name,
          'beta': beta, 'steps': f'{tail[0]["step"]}-{end}', 'recon': recon,
          'beta_mi': term, 'ratio': abs(term) / recon if recon else float('nan'),
          'critic_mi': float(np.mean([r['critic_mi'] for r in tail]))}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--last', type=int, default=500)
  p.add_argument('workdirs', nargs='+')
  args = p.parse_args(argv)
  print('| run | loss | beta | steps | L_recon | beta x L_MI | abs ratio | critic MI (nats) |')
  print('|---|---|---|---|---|---|---|---|')
  for wd in args.workdirs:
    s = scale(wd, args.last)
    print(f'| {s["run"]} | {s["loss"]} | {s["beta"]:g} | {s["steps"]} | {s["recon"]:.4g} | '
          f'{s["beta_mi"]:.3g} | {s["ratio"]:.3g} | {s["critic_mi"]:.2f} |')


if __name__ == '__main__':
  main()
