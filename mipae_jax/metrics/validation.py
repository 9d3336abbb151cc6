"""Synthetic latents with known answers, the checks the MIG's estimators must pass on
them, and the command line that runs those checks.

The probe suite. One sprite as in the demo: content is one of 240 combinations (log 240 =
5.48 nats), pose its x and y on a 32 x 32 grid (2 log 32 = 6.93 nats). Latents are noisy
codes whose information is known exactly:

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

The kNN cases (`selfcheck`): `knn.mi_ksg` on Gaussian channels (MI in closed form),
Ross on label channels (MI by quadrature), and `mig.paper_mig` on two-sprite factors
(`sprite_like`) with copied, independent and swapped latents and with every joint pose
label unique. `benchmark` times both MIG estimators at 100,000 frames, z_c 128 wide.

  python -m mipae_jax.metrics.validation                        # probe suite, kNN cases
  python -m mipae_jax.metrics.validation --knn_only --n 1500    # kNN cases, seconds
  python -m mipae_jax.metrics.validation --benchmark
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from mipae_jax.factors import FactorGroup
from mipae_jax.metrics import knn, mig, probe

# ----------------------------------------------------------------------------- probe suite

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
              twice: tuple[str, ...] = tuple(EXPECTED),
              cases: tuple[str, ...] = tuple(EXPECTED),
              widths: tuple[int, ...] = (2, 8, 64)) -> dict:
  """Every check above. Returns {check: {..., 'ok': bool}} plus 'seconds'.

  knn: also report the paper's kNN protocol (`_knn`; the flag hides the module `knn` in
    here, which this function does not use).
  twice: the cases also estimated at 2n frames (the stability check); the others are
  compared with themselves at n.
  cases, widths: a part of the suite (the default: all of it): the known-answer cases,
    and the widths of the random projections of the leaky z_c (which need 'leaky').
  """
  t0 = time.perf_counter()
  out, migs = {}, {}
  for case, want in ((c, EXPECTED[c]) for c in cases):
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
  if {'padded', 'ideal'} <= set(cases):
    out['padded_vs_ideal'] = {
        'difference': migs['padded', n]['mig'] - migs['ideal', n]['mig'],
        'ok': abs(migs['padded', n]['mig'] - migs['ideal', n]['mig']) < 0.05}

  # Data processing: no function of z_c holds more than z_c (needs the leaky case).
  if widths and 'leaky' not in cases:
    raise ValueError(f'run_suite: widths={widths} project the leaky z_c; add it to cases.')
  z_c, _, content, pose = latents('leaky', n, seed)
  full = ({'fc': migs['leaky', n]['I_fc_zc'], 'fp': migs['leaky', n]['I_fp_zc']}
          if 'leaky' in cases else {})
  rng = np.random.default_rng([seed, 3])
  for width in (2, 8, 64):
    proj = z_c @ rng.standard_normal((DC, width))  # Drawn for every width: same matrices.
    if width not in widths:
      continue
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


# ----------------------------------------------------------------------------- kNN cases


def gaussian_channel(n: int, dim: int, snr: float, seed: int = 0):
  """x ~ N(0, I_dim), z = x + N(0, I / snr). Returns x [n, dim], z [n, dim], true MI."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, dim))
  z = x + rng.standard_normal((n, dim)) / np.sqrt(snr)
  return x, z, 0.5 * dim * np.log1p(snr)


def label_channel(n: int, classes: int, spacing: float, seed: int = 0):
  """y uniform on `classes`, z = spacing * y + N(0, 1) [n, 1]; MI by quadrature."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  z = spacing * y + rng.standard_normal(n)
  grid = np.linspace(-8, spacing * (classes - 1) + 8, 20001)
  dens = np.mean([np.exp(-0.5 * (grid - spacing * c) ** 2) for c in range(classes)], 0)
  dens /= np.sqrt(2 * np.pi)
  h_z = -np.trapezoid(dens * np.log(np.maximum(dens, 1e-300)), grid)
  return y, z[:, None], float(h_z - 0.5 * np.log(2 * np.pi * np.e))


def sprite_like(n: int, seed: int = 0, content_levels=(3, 6), grid: int = 32,
                noise: float = 0.05, dc: int = 24, dp: int = 4):
  """Synthetic factors with two sprites' x, y on a grid (grid^4 joint pose labels).

  Returns content [n, 2] (ints), pose [n, 4] (ints), and good latents z_c [n, dc]
  (a random linear embedding of the content one-hot code plus noise) and z_p [n, dp]
  (the scaled pose plus noise).
  """
  rng = np.random.default_rng(seed)
  content = np.stack([rng.integers(0, c, n) for c in content_levels], 1)
  pose = rng.integers(0, grid, (n, 4))
  n_c = int(np.prod(content_levels))
  code = np.eye(n_c)[np.ravel_multi_index(content.T, content_levels)]
  z_c = code @ rng.standard_normal((n_c, dc)) + noise * rng.standard_normal((n, dc))
  z_p = np.zeros((n, dp))
  z_p[:, :4] = pose / grid
  z_p += noise / grid * rng.standard_normal((n, dp))
  return content, pose, z_c, z_p


def selfcheck(n: int = 8000, seed: int = 0) -> dict:
  """The kNN estimators on synthetic cases with known answers (`paper_mig` on
  `sprite_like` latents, `mi_ksg` on `gaussian_channel`, Ross on `label_channel`).

  Returns {case: {..., 'ok': bool}}.
  """
  out = {}
  rng = np.random.default_rng(seed)
  content, pose, z_c, z_p = sprite_like(n, seed)
  card_c, card_p = (3, 6), (32,) * 4

  good = mig.paper_mig(z_c, z_p, content, pose, content_cardinality=card_c,
                       pose_cardinality=card_p)
  # Content is recoverable (I = H) and the pose latent is a low-noise copy of the pose.
  out['copy'] = {**good, 'ok': good['mig'] > 0.85 and good['pose_term'] > 0.75
                 and abs(good['I_fc_zc'] - good['H_fc']) < 0.1 * good['H_fc']}

  noise_c, noise_p = rng.standard_normal(z_c.shape), rng.standard_normal(z_p.shape)
  ind = mig.paper_mig(noise_c, noise_p, content, pose)
  out['independent'] = {
      **ind, 'ok': all(abs(ind[key]) < 0.1 for key in ('I_fc_zc', 'I_fc_zp', 'I_fp_zc',
                                                        'I_fp_zp'))
      and abs(ind['mig']) < 0.05}

  swap = mig.paper_mig(z_p, z_c, content, pose)
  out['swapped'] = {**swap, 'ok': swap['mig'] < -0.5}

  # Every joint pose label unique (n distinct cells of the 32^4 grid): KSG, all samples.
  cells = rng.choice(32 ** 4, n, replace=False)
  pose_u = np.stack(np.unravel_index(cells, card_p), 1)
  _, counts = knn.joint_labels(pose_u)
  zp_u = pose_u / 32 + 0.002 * rng.standard_normal((n, 4))
  uniq = mig.paper_mig(z_c, zp_u, content, pose_u, pose_cardinality=card_p)
  out['unique_pose_labels'] = {
      **uniq, 'unique_fraction': float(np.mean(counts == 1)),
      'ok': uniq['n_samples'] == n and uniq['estimator_fp'] == 'ksg'
      and uniq['pose_term'] > 0.8 and abs(uniq['I_fp_zc']) < 0.1}

  for dim, snr, backend in ((1, 1.0, 'tree'), (2, 3.0, 'tree'), (1, 9.0, 'tree'),
                            (2, 1.0, 'brute'), (1, 9.0, 'brute')):
    x, z, truth = gaussian_channel(n, dim, snr, seed)
    est = knn.mi_ksg(x, z, backend=backend)
    out[f'gauss_ksg_{backend}_d{dim}_snr{snr:g}'] = {
        'estimate': est, 'truth': truth, 'ok': abs(est - truth) < 0.1 * truth}
  for classes, spacing, backend in ((4, 2.0, 'tree'), (8, 1.0, 'tree'), (4, 2.0, 'brute')):
    y, z, truth = label_channel(n, classes, spacing, seed)
    est = knn.mi_discrete_continuous(y, z, backend=backend)
    out[f'ross_{backend}_labels{classes}_spacing{spacing:g}'] = {
        'estimate': est, 'truth': truth, 'ok': abs(est - truth) < 0.1 * truth}
  for key, val in out.items():
    out[key] = {a: (bool(b) if isinstance(b, np.bool_) else b) for a, b in val.items()}
  return out


def benchmark(n: int = 100_000, dc: int = 128, dp: int = 5, seed: int = 0) -> dict:
  """Times paper_mig and probe_mig on n samples (two-sprite pose grid, 128-wide z_c)."""
  content, pose, _, _ = sprite_like(n, seed, content_levels=(3, 6, 40))
  rng = np.random.default_rng(seed)
  n_c = 3 * 6 * 40
  code = np.ravel_multi_index(content.T, (3, 6, 40))
  z_c = np.tanh(rng.standard_normal((n_c, dc))[code] + 0.3 * rng.standard_normal((n, dc)))
  z_p = np.tanh(np.hstack([pose / 16 - 1, rng.standard_normal((n, dp - 4))])
                + 0.05 * rng.standard_normal((n, dp)))
  z_c, z_p = z_c.astype(np.float32), z_p.astype(np.float32)
  res = mig.paper_mig(z_c, z_p, content, pose)
  groups_c = (FactorGroup('content', (0, 1, 2), entropy=float(np.log(n_c))),)
  groups_p = tuple(FactorGroup(f'p{i}', (i,), ordinal=True, levels=32,
                               entropy=float(np.log(32))) for i in range(4))
  pres = mig.probe_mig(z_c, z_p, content, pose, groups_c, groups_p)
  return {'n': n, 'dc': dc, 'dp': dp, 'seconds': res['seconds'], 'result': res,
          'probe_seconds': pres['seconds'],
          'probe_result': {k: v for k, v in pres.items() if k != 'terms'}}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description='The MIG estimators on latents with known answers: the probe suite '
      '(with the kNN numbers beside it), then the kNN cases; or, with --benchmark, their '
      'running times.')
  parser.add_argument('--benchmark', action='store_true',
                      help='time both estimators on synthetic 128-wide latents')
  parser.add_argument('--n', type=int, default=None, help='frames (suite: n and 2n)')
  parser.add_argument('--knn_only', action='store_true', help='only the kNN cases')
  args = parser.parse_args(argv)
  if args.benchmark:
    res = benchmark(args.n or 100_000)
    print(json.dumps(res, indent=1))
    print(f"probe MIG on {res['n']} samples: {res['probe_seconds']:.1f} s; paper protocol "
          f"(kNN): {res['seconds']:.1f} s")
    return 0
  bad = []
  if not args.knn_only:
    suite = run_suite(args.n or 20_000)
    print(format_suite(suite))
    print(f"probe suite: {suite.pop('seconds'):.0f} s")
    bad += [f'probe:{key}' for key, val in suite.items() if not val['ok']]
  res = selfcheck(8000 if args.n is None else min(args.n, 8000))
  print(json.dumps(res, indent=1, default=float))
  bad += [f'knn:{key}' for key, val in res.items() if not val['ok']]
  if bad:
    print('FAILED:', ', '.join(bad), file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
