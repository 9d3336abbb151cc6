"""mipae-study: compares methods over seeds, every (method, seed) an ordinary run, then
the statistics.

  mipae-study --config=demo --methods=mipae,drnet --seeds=0,1,2 --workdir=studies/demo
  mipae-study --workdir=studies/demo --aggregate_only

Each run is `mipae-train --config=CONFIG --config.loss.name=METHOD --config.seed=SEED
--workdir=DIR/METHOD-sSEED` (plus any `--config.FIELD=VALUE` given here, passed to every
run), so it checkpoints and resumes as any run does; a finished run is skipped. A killed
study continues with the same command. Then `mipae_jax.study.aggregate` writes
DIR/results.json, results.md and the pictures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from mipae_jax import cli, losses, study


def _ints(text: str) -> list[int]:
  try:
    return [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'expected comma-separated integers, got {text!r}') from None


def parse(argv):
  parser = cli.ArgumentParser(prog='mipae-study', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', help='a packaged config (e.g. study, demo) or a config '
                      'file, as for mipae-train')
  parser.add_argument('--methods', default='mipae,drnet',
                      help=f'comma-separated, from {losses.names()}')
  parser.add_argument('--seeds', type=_ints, default=[0, 1, 2])
  parser.add_argument('--workdir', required=True, help='the study directory')
  parser.add_argument('--jobs', type=int, default=1, help='runs at a time')
  parser.add_argument('--aggregate_only', action='store_true')
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith('--config.')]
  if bad:
    parser.error(f'unknown arguments {bad}: only --config.FIELD=VALUE overrides pass '
                 'through to the runs')
  args.overrides = rest
  args.methods = [m for m in args.methods.split(',') if m]
  unknown = [m for m in args.methods if m not in losses.names()]
  if unknown:
    parser.error(f'--methods: {unknown} not in {losses.names()}')
  if not args.aggregate_only and not args.config:
    parser.error('--config is required unless --aggregate_only')
  if args.jobs < 1:
    parser.error('--jobs must be >= 1')
  for o in args.overrides:
    if o.split('=')[0] in ('--config.loss.name', '--config.seed'):
      parser.error(f'{o}: the study sets loss.name and seed itself (--methods, --seeds)')
  return args


def run_one(args, method: str, seed: int) -> str:
  """Runs (or resumes, or skips) one run; returns its name. Raises on failure."""
  name = study.run_name(method, seed)
  run_dir = os.path.join(args.workdir, name)
  if study.is_complete(run_dir):
    print(f'[study] {name}: finished, skipped', flush=True)
    return name
  cmd = [sys.executable, '-m', 'mipae_jax.commands.train', f'--config={args.config}',
         f'--config.loss.name={method}', f'--config.seed={seed}', f'--workdir={run_dir}',
         *args.overrides]
  print(f'[study] {name}: {" ".join(cmd[1:])}', flush=True)
  os.makedirs(run_dir, exist_ok=True)
  log_path = os.path.join(run_dir, 'study.log')
  t0 = time.time()
  with open(log_path, 'a') as log:
    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
  # Wall time summed over every invocation, so a resumed run reports all it cost.
  time_path = os.path.join(run_dir, study.TIME_FILE)
  spent = 0.0
  if os.path.exists(time_path):
    with open(time_path) as f:
      spent = json.load(f)['seconds']
  with open(time_path, 'w') as f:
    json.dump({'seconds': spent + time.time() - t0}, f)
  if code != 0:
    raise RuntimeError(f'{name} failed with exit code {code}; see {log_path}. Run the '
                       'same study command again to resume it.')
  print(f'[study] {name}: done in {time.time() - t0:.0f} s', flush=True)
  return name


def main(argv=None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  runs = None
  if not args.aggregate_only:
    os.makedirs(args.workdir, exist_ok=True)
    todo = [(m, s) for s in args.seeds for m in args.methods]
    with ThreadPoolExecutor(args.jobs) as pool:
      runs = list(pool.map(lambda ms: run_one(args, *ms), todo))
  try:
    results = study.aggregate(args.workdir, runs)
  except ValueError as e:
    print(f'[study] {e}', file=sys.stderr)
    return 2
  for m, e in results['methods'].items():
    mig = e.get('mig', {})
    print(f'[study] {m}: MIG {mig.get("mean", float("nan")):.4f} ± '
          f'{mig.get("ci95", float("nan")):.4f} over seeds {e["seeds"]}')
  print(f'[study] wrote {os.path.join(args.workdir, study.RESULTS_MD)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
