"""The curve of a long run: every kept autoencoder checkpoint of a workdir, evaluated alike.

  python -m experiments.studies.long_run --workdir=~/runs/long-mipae-s0 \
      --workdir=~/runs/long-drnet-s0 --out=docs/study/long_run

For each workdir and each kept autoencoder step (`train.keep_checkpoints` large enough to
keep them all), at one `--mig_samples` and one `eval.seed`: the analogy accuracy (shape
and scale kept from the content source, position from the pose source; with its ceiling
and blob level), the probe MIG and its four MIs, the linear R^2 of pose from z_c, and the
analogy and reconstruction pictures. A step already in OUT/curve.json is not redone, so
the same command extends the curve as the runs go on; `--redo` evaluates every step again
(after a change to the evaluation), replacing its row. The pose LSTM is trained after the
autoencoder, so SSIM/PSNR/LPIPS per future step are those of the run's own evaluation
(`WORKDIR/eval/metrics.json`), at its last step only.

Writes OUT/curve.json (every row), OUT/curve.md (one table per run) and
OUT/strip.png (each run's analogy grid at every step, left to right).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from PIL import Image, ImageDraw

from mipae_jax import checkpoint, cli, config_record, data, evaluate, runs, train
from mipae_jax.metrics import analogy


def kept_steps(workdir: str) -> list[int]:
  store = checkpoint.CheckpointStore(workdir, 'ae', enabled=False)
  try:
    return store.all_steps()
  finally:
    store.close()


def evaluate_step(config, workdir: str, step: int, source, out_dir: str,
                  analogy_videos: int) -> dict:
  """One row of the curve (and the step's pictures under `out_dir`)."""
  t0 = time.time()
  ae_variables = train.autoencoder_variables(runs.restore_autoencoder(config, workdir, step))
  mig = evaluate.disentanglement(config, ae_variables, source)
  probe = mig['probe']
  row = {'run': os.path.basename(os.path.normpath(workdir)), 'method': config.loss.name,
         'seed': config.seed, 'step': step, 'mig_samples': mig['n_samples'],
         'mig': probe['mig'], **{k: probe[k] for k in
                                 ('I_fc_zc', 'I_fc_zp', 'I_fp_zc', 'I_fp_zp')},
         'r2_pose_from_zc': mig['linear_r2']['pose_from_zc']}
  a = analogy.evaluate_analogies(config, ae_variables, source, analogy_videos,
                                 config.eval.seed,
                                 cache_dir=os.path.join(cli.cache_dir(), 'analogy'))
  row.update({k: v for k, v in a.items() if k != 'protocol'})
  videos, _ = evaluate.prediction_videos(config, source)
  os.makedirs(out_dir, exist_ok=True)
  evaluate.write_pictures(config, ae_variables, None, videos, None, out_dir)
  row['seconds'] = round(time.time() - t0, 1)
  return row


def final_prediction(workdir: str) -> dict | None:
  """SSIM/PSNR/LPIPS per future step from the run's own evaluation, if it has one."""
  path = os.path.join(workdir, 'eval', 'metrics.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    m = json.load(f)
  p = m.get('prediction')
  if not p:
    return None
  return {'ae_step': m['ae_step'], 'lstm_step': m['lstm_step'],
          **{k: p[k] for k in ('ssim_mean', 'psnr_mean', 'lpips_mean') if k in p}}


def table(rows: list[dict]) -> str:
  head = ('| step | analogy content acc. | shape | scale | position err. (px) | probe MIG | '
          'I(fc;zc) | I(fc;zp) | I(fp;zc) | I(fp;zp) | R^2 pose from z_c |')
  lines = [head, '|' + '---|' * 11]
  for r in rows:
    lines.append(
        f'| {r["step"]:,} | {r["content_accuracy"]:.3f} | {r.get("shape_accuracy", 0):.3f} | '
        f'{r.get("scale_accuracy", 0):.3f} | {r["position_error_px"]:.2f} | {r["mig"]:.3f} | '
        f'{r["I_fc_zc"]:.3f} | {r["I_fc_zp"]:.3f} | {r["I_fp_zc"]:.3f} | {r["I_fp_zp"]:.3f} | '
        f'{r["r2_pose_from_zc"]:.3f} |')
  last = rows[-1]
  lines += ['', f'Analogy levels: ceiling (true frames) {last["ceiling_content_accuracy"]:.3f}, '
            f'blobs {last["blob_content_accuracy"]:.3f}, chance '
            f'{last["chance_content_accuracy"]:.3f}.']
  return '\n'.join(lines)


def strip(out: str, runs: dict[str, list[int]]) -> str:
  """Each run's analogy grids, one row per run, one column per step, labelled."""
  rows = []
  for run, steps in runs.items():
    cells = [Image.open(os.path.join(out, run, str(s), 'analogy.png')).convert('RGB')
             for s in steps]
    w, h = cells[0].size
    row = Image.new('RGB', (w * len(cells), h + 14), 'white')
    draw = ImageDraw.Draw(row)
    for i, (s, cell) in enumerate(zip(steps, cells, strict=True)):
      row.paste(cell, (i * w, 14))
      draw.text((i * w + 2, 1), f'{run} {s:,}', fill='black')
    rows.append(row)
  width = max(r.size[0] for r in rows)
  image = Image.new('RGB', (width, sum(r.size[1] for r in rows)), 'white')
  y = 0
  for r in rows:
    image.paste(r, (0, y))
    y += r.size[1]
  path = os.path.join(out, 'strip.png')
  image.save(path)
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', action='append', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--mig_samples', type=int, default=20_000)
  parser.add_argument('--analogy_videos', type=int, default=200)
  parser.add_argument('--redo', action='store_true',
                      help='evaluate every kept step again, replacing its row')
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'curve.json')
  rows = json.load(open(path)) if os.path.exists(path) else []
  if args.redo:  # Rows of these runs are all measured again (a step no longer kept: gone).
    given = {os.path.basename(os.path.normpath(os.path.expanduser(w))) for w in args.workdir}
    rows = [r for r in rows if r['run'] not in given]
  done = {(r['run'], r['step']) for r in rows}
  finals, runs = {}, {}
  for workdir in (os.path.expanduser(w) for w in args.workdir):
    config = config_record.load_config(workdir)
    config.eval.mig_samples = args.mig_samples
    source = data.make_source(config.data)
    run = os.path.basename(os.path.normpath(workdir))
    runs[run] = kept_steps(workdir)
    for step in runs[run]:
      if (run, step) in done:
        continue
      row = evaluate_step(config, workdir, step, source, os.path.join(args.out, run, str(step)),
                          args.analogy_videos)
      rows.append(row)
      rows.sort(key=lambda r: (r['run'], r['step']))
      with open(path, 'w') as f:
        json.dump(rows, f, indent=1)  # After every step: a killed pass loses one step.
      print(f'[long_run] {run} step {step}: analogy {row["content_accuracy"]:.3f}, probe MIG '
            f'{row["mig"]:.3f}, I(fp;zc) {row["I_fp_zc"]:.2f} ({row["seconds"]} s)', flush=True)
    finals[run] = final_prediction(workdir)
  lines = [f'# The long runs, step by step ({args.mig_samples:,} MIG frames, '
           f'{args.analogy_videos} analogy videos)', '']
  for run in runs:
    lines += [f'## {run}', '', table([r for r in rows if r['run'] == run]), '']
    if finals[run]:
      lines += [f'Prediction (the run\'s own evaluation): {json.dumps(finals[run])}', '']
  with open(os.path.join(args.out, 'curve.md'), 'w') as f:
    f.write('\n'.join(lines))
  print(f'[long_run] wrote {path}, curve.md and {strip(args.out, runs)}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
