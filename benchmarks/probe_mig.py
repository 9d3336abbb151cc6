"""The probe MIG's running time on a trained model's latents: this checkout's probe against
another commit's, side by side in one run.

  python -m benchmarks.probe_mig --ref=bc99f9f              # 100,000 frames, both probes
  python -m benchmarks.probe_mig --n=20000 --rounds=2
  python -m benchmarks.probe_mig --model=workdirs/demo --n=20000

Encodes --n test frames of --model (a run directory or an exported model; by default the
shipped pretrained model: two sprites at 64x64, the default config's factors and latent
widths) once, then runs `mig.probe_mig` on them in a fresh process per measurement: with
this checkout's probe and, with --ref, with the probe module of that git commit
(`git show REF:mipae_jax/metrics/probe.py`, put in place of `mipae_jax.metrics.probe`),
alternating, --rounds times. Prints each term's seconds, epochs and bound, and the ratio
ref / this of each round's totals. The encoder's pass is timed once, apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

DEFAULT_MODEL = 'pretrained/moving_dsprites_two_sprites'

_CHILD = r'''
import importlib.util, json, pickle, sys, time
import numpy as np
from mipae_jax.metrics import mig
latents, module = sys.argv[1], sys.argv[2]
if module != '-':
  spec = importlib.util.spec_from_file_location('ref_probe', module)
  ref = importlib.util.module_from_spec(spec)
  sys.modules['ref_probe'] = ref  # Its dataclasses look themselves up there.
  spec.loader.exec_module(ref)
  mig.probe = ref  # probe_mig's default config is bound to ours: pass ref's own below.
d = np.load(latents + '.npz')
content_groups, pose_groups = pickle.load(open(latents + '.groups.pkl', 'rb'))
t = time.perf_counter()
r = mig.probe_mig(d['zc'], d['zp'], d['c'], d['p'], content_groups, pose_groups,
                  config=mig.probe.DEFAULT)
out = {'seconds': time.perf_counter() - t, 'mig': r['mig'],
       'terms': {k: {'seconds': r['seconds_by_part'][k], 'epochs': v['epochs'], 'mi': v['mi']}
                 for k, v in r['terms'].items()}}
print('RESULT ' + json.dumps(out))
'''


def encode(model: str, n: int, out: str) -> float:
  """Writes the latents and factors of `n` test frames of `model` to out.npz (and its
  factor groups to out.groups.pkl); returns the seconds the encoding took."""
  import pickle

  from mipae_jax import data, evaluate, runs

  run = runs.load_run(model, allow_stale_lstm=True)
  source = data.make_source(run.config.data)
  t = time.perf_counter()
  z_c, z_p, content, pose = evaluate.encode_static(
      run.config, run.variables['autoencoder'], source, n, run.config.eval.seed)
  seconds = time.perf_counter() - t
  np.savez(out + '.npz', zc=z_c, zp=z_p, c=content, p=pose)
  with open(out + '.groups.pkl', 'wb') as f:
    pickle.dump(evaluate.factor_groups(source, content, pose), f)
  return seconds


def measure(latents: str, module: str) -> dict:
  proc = subprocess.run([sys.executable, '-c', _CHILD, latents, module], capture_output=True,
                        text=True)
  if proc.returncode:
    raise SystemExit(f'the probe run failed:\n{proc.stderr[-3000:]}')
  line = [x for x in proc.stdout.splitlines() if x.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default=DEFAULT_MODEL)
  parser.add_argument('--n', type=int, default=100_000)
  parser.add_argument('--ref', default=None, help='a git commit whose probe to compare')
  parser.add_argument('--rounds', type=int, default=1)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    latents = os.path.join(tmp, 'latents')
    seconds = encode(args.model, args.n, latents)
    print(f'{args.model}: {args.n:,} frames encoded in {seconds:.1f} s', flush=True)
    sides = [('this', '-')]
    if args.ref:
      path = os.path.join(tmp, 'ref_probe.py')
      with open(path, 'w') as f:
        f.write(subprocess.run(['git', 'show', f'{args.ref}:mipae_jax/metrics/probe.py'],
                               capture_output=True, text=True, check=True).stdout)
      sides = [(args.ref, path), ('this', '-')]
    print('| round | probe | total s | MIG | ' + ' | '.join(
        f'{t} s (epochs) bound' for t in ('I_fc_zc', 'I_fp_zc', 'I_fc_zp', 'I_fp_zp')) + ' |')
    print('|---' * 8 + '|')
    for r in range(args.rounds):
      totals = {}
      for name, module in sides:
        res = measure(latents, module)
        totals[name] = res['seconds']
        cells = [f"{v['seconds']:.1f} ({v['epochs']}) {v['mi']:.3f}"
                 for v in res['terms'].values()]
        print(f'| {r} | {name} | {res["seconds"]:.1f} | {res["mig"]:.3f} | '
              + ' | '.join(cells) + ' |', flush=True)
      if args.ref:
        print(f'round {r}: {args.ref} / this = {totals[args.ref] / totals["this"]:.2f}',
              flush=True)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
