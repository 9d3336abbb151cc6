"""Synthetic latents with known answers, and the checks an MI estimator must pass.

One sprite as in the demo: content is one of 240 combinations (log 240 = 5.48 nats), pose
its x and y on a 32 x 32 grid (2 log 32 = 6.93 nats). Latents are noisy codes whose
information is known exactly:

  ideal    z_c codes the content (128 wide), z_p the position (2 wide): MIG 1
  noise    both independent of the factors: MIG 0
  swapped  z_c and z_p exchanged: MIG -1
  leaky    z_c also carries a linear code of the position (mixed into all 128
           coordinates): I(f_p; z_c) = H(f_p), so the pose half is 0 and MIG 0.5
  padded   ideal, with 3 independent N(0, 1) coordinates appended to z_p: MIG 1

`run_suite` checks, for the probe estimator (`mig.probe_mig`): the five MIGs; padded
within 0.05 of ideal; the data-processing inequality (the bound for a random linear
projection Pz of the leaky z_c never exceeds the bound for z_c, for both factors); and
every MIG within 0.05 between n and 2n frames. It also reports the paper's kNN protocol
on the same latents, which fails the leaky, padded and projection cases.
`python -m mipae_jax.metrics.mig --selfcheck` runs it.
"""

from __future__ import annotations

import time

import numpy as np

from mipae_jax.data.common import FactorGroup
from mipae_jax.metrics import mig, probe

COMBOS, GRID, DC, CODE = 240, 32, 128, 16
CONTENT_GROUPS = (FactorGroup('sprite', (0,), entropy=float(np.log(COMBOS))),)
POSE_GROUPS = tuple(FactorGroup(a, (i,), ordinal=True, levels=GRID,
                                entropy=float(np.log(GRID))) for i, a in enumerate('xy'))
H_CONTENT, H_POSE = float(np.log(COMBOS)), float(2 * np.log(GRID))


def _codebook(seed: int):
  """Fixed per seed (not per n): content codes [240, 16] and a mixing matrix [18, 128]."""
  rng = np.random.default_rng([seed, 7])
  codes = rng.standard_normal((COMBOS, CODE))
  mix, _ = np.linalg.qr(rng.standard_normal((DC, CODE + 2)))
  return codes, mix.T


def factors(n: int, seed: int = 0):
  """content [n, 1] (combination id), pose [n, 2] (x, y levels), uniformly drawn."""
  rng = np.random.default_rng([seed, n, 1])
  return rng.integers(0, COMBOS, (n, 1)), rng.integers(0, GRID, (n, 2))


def latents(case: str, n: int, seed: int = 0):
  """(z_c [n, 128], z_p [n, 2 or 5], content [n, 1], pose [n, 2]) of a named case."""
  codes, mix = _codebook(seed)
  content, pose = factors(n, seed)
  rng = np.random.default_rng([seed, n, 2])
  c_code = codes[content[:, 0]] + 0.1 * rng.standard_normal((n, CODE))
  p_code = (pose - (GRID - 1) / 2) / 9.2 + 0.01 * rng.standard_normal((n, 2))
  z_c = np.hstack([c_code, np.zeros((n, 2))]) @ mix
  z_p = p_code
  if case == 'noise':
    z_c, z_p = rng.standard_normal(z_c.shape), rng.standard_normal(z_p.shape)
  elif case == 'swapped':
    z_c, z_p = z_p, z_c
  elif case == 'leaky':
    z_c = np.hstack([c_code, p_code]) @ mix
  elif case == 'padded':
    z_p = np.hstack([z_p, rng.standard_normal((n, 3))])
  elif case != 'ideal':
    raise ValueError(f'unknown case {case!r}')
  return z_c.astype(np.float32), z_p.astype(np.float32), content, pose


def _knn(z_c, z_p, content, pose) -> dict:
  """The paper protocol (Ross for the content, KSG for the pose); NaN where a content
  label occurs once in too few frames (Ross is undefined there)."""
  if np.min(np.bincount(content[:, 0])) < 2:
    return dict.fromkeys(('mig', 'I_fc_zc', 'I_fc_zp', 'I_fp_zc', 'I_fp_zp'), float('nan'))
  return mig.paper_mig(z_c, z_p, content, pose, content_mode='discrete',
                       pose_mode='continuous')


EXPECTED = {'ideal': 1.0, 'noise': 0.0, 'swapped': -1.0, 'leaky': 0.5, 'padded': 1.0}


def run_suite(n: int = 20_000, seed: int = 0, knn: bool = True,
              config: probe.ProbeConfig = probe.DEFAULT,
              twice: tuple[str, ...] = tuple(EXPECTED)) -> dict:
  """Every check above. Returns {check: {..., 'ok': bool}} plus 'seconds'.

  twice: the cases also estimated at 2n frames (the stability check); the others are
  compared with themselves at n.
  """
  t0 = time.perf_counter()
  out, migs = {}, {}
  for case, want in EXPECTED.items():
    for size in ((n, 2 * n) if case in twice else (n,)):
      z_c, z_p, content, pose = latents(case, size, seed)
      res = mig.probe_mig(z_c, z_p, content, pose, CONTENT_GROUPS, POSE_GROUPS, config)
      migs[case, size] = res
    r = migs[case, n]
    entry = {'expected_mig': want, 'mig': r['mig'],
             'mig_2n': migs.get((case, 2 * n), r)['mig'],
             **{k: r[k] for k in ('I_fc_zc', 'I_fc_zp', 'I_fp_zc', 'I_fp_zp')}}
    entry['ok'] = abs(r['mig'] - want) < 0.05 and abs(entry['mig_2n'] - r['mig']) < 0.05
    if case == 'noise':
      entry['ok'] &= all(abs(r[k]) < 0.05 for k in ('I_fc_zc', 'I_fc_zp', 'I_fp_zc',
                                                     'I_fp_zp'))
    if case == 'leaky':
      entry['ok'] &= r['I_fp_zc'] > 0.95 * H_POSE
    if knn:
      k = _knn(z_c, z_p, content, pose)  # The latents of the largest size.
      entry['knn_2n'] = {key: k[key] for key in ('mig', 'I_fc_zc', 'I_fc_zp', 'I_fp_zc',
                                                 'I_fp_zp')}
    out[case] = entry
  out['padded_vs_ideal'] = {
      'difference': migs['padded', n]['mig'] - migs['ideal', n]['mig'],
      'ok': abs(migs['padded', n]['mig'] - migs['ideal', n]['mig']) < 0.05}

  # Data processing: no function of z_c holds more than z_c.
  z_c, _, content, pose = latents('leaky', n, seed)
  full = {'fc': migs['leaky', n]['I_fc_zc'], 'fp': migs['leaky', n]['I_fp_zc']}
  rng = np.random.default_rng([seed, 3])
  for width in (2, 8, 64):
    proj = z_c @ rng.standard_normal((DC, width))
    got = {'fc': probe.mi_lower_bound(proj, content, CONTENT_GROUPS, config)['mi'],
           'fp': probe.mi_lower_bound(proj, pose, POSE_GROUPS, config)['mi']}
    entry = {'I_fc_Pz': got['fc'], 'I_fp_Pz': got['fp'], 'I_fc_z': full['fc'],
             'I_fp_z': full['fp'],
             'ok': all(got[f] <= full[f] + 0.02 for f in full)}
    if knn:
      k = _knn(proj, proj[:, :1], content, pose)
      entry['knn'] = {'I_fc_Pz': k['I_fc_zc'], 'I_fp_Pz': k['I_fp_zc']}
    out[f'projection_{width}'] = entry
  if knn:
    k = _knn(z_c, z_c[:, :1], content, pose)
    out['knn_leaky_zc'] = {'I_fc_zc': k['I_fc_zc'], 'I_fp_zc': k['I_fp_zc'], 'ok': True}
  for val in out.values():
    val['ok'] = bool(val['ok'])
  out['seconds'] = time.perf_counter() - t0
  return out


def format_suite(res: dict) -> str:
  """A markdown table of `run_suite`'s result."""
  lines = ['| case | expected MIG | probe MIG (n) | probe MIG (2n) | kNN MIG (2n) | '
           'I(fp;zc) probe | I(fp;zc) kNN | ok |', '|---|---|---|---|---|---|---|---|']
  for case, want in EXPECTED.items():
    r = res[case]
    k = r.get('knn_2n', {})
    lines.append(f'| {case} | {want:.1f} | {r["mig"]:.3f} | {r["mig_2n"]:.3f} | '
                 f'{k.get("mig", float("nan")):.3f} | {r["I_fp_zc"]:.3f} | '
                 f'{k.get("I_fp_zc", float("nan")):.3f} | {r["ok"]} |')
  lines += ['', '| random projection Pz of the leaky z_c | I(fc;Pz) probe | I(fc;z) probe | '
            'I(fp;Pz) probe | I(fp;z) probe | I(fp;Pz) kNN | ok |',
            '|---|---|---|---|---|---|---|']
  for key in sorted((k for k in res if k.startswith('projection_')),
                    key=lambda k: int(k.split('_')[1])):
    r = res[key]
    lines.append(f'| {key.split("_")[1]} wide | {r["I_fc_Pz"]:.3f} | {r["I_fc_z"]:.3f} | '
                 f'{r["I_fp_Pz"]:.3f} | {r["I_fp_z"]:.3f} | '
                 f'{r.get("knn", {}).get("I_fp_Pz", float("nan")):.3f} | {r["ok"]} |')
  if 'knn_leaky_zc' in res:
    lines += ['', f'kNN on the whole leaky z_c (128 wide): I(fp;zc) = '
              f'{res["knn_leaky_zc"]["I_fp_zc"]:.3f} nats (truth {H_POSE:.3f}).']
  return '\n'.join(lines)
