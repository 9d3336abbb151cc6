"""Mutual-information gap (MIG): the paper's signed, whole-vector form and Chen et al.'s.

This module holds the formulas; the estimators of the mutual informations they combine
live in `knn` (k-nearest-neighbour) and `probe` (held-out probe bounds), their checks on
latents with known answers in `validation`.

Paper form (the paper's eq. 8), all quantities in nats:

  MIG = 0.5 / H(f_c) * (I(f_c; z_c) - I(f_c; z_p)) + 0.5 / H(f_p) * (I(f_p; z_p) - I(f_p; z_c))

f_c is the joint content factor, f_p the joint pose factor, z_c / z_p whole latent vectors.
The differences are signed: a model with content and pose swapped scores negative (the
published code took absolute values).

Two estimators of the four MIs:

* `probe_mig` (the default, `config.eval.mig_estimator = 'probe'`): held-out variational
  lower bounds I >= H(f) - CE of a probe trained to predict the factors from the latent
  (`metrics.probe`), each half normalised by the ceiling I(f; image). Valid in any
  dimension; validated on latents with known answers (`metrics.validation`).
* `paper_mig` (`'paper'`, the paper's protocol): k-nearest-neighbour estimators
  (`metrics.knn`). In the 128 dimensions of z_c the kNN distances are dominated by the
  content code, so pose information there is nearly invisible to them: on a latent whose
  z_c holds the whole position (6.93 nats) they report a small fraction of it, less than
  they report for a 2-d linear projection of the same z_c, which no function of z_c can
  exceed. Kept for comparison with the paper's Table 1.

`classic_mig` is Chen et al.'s (2018) per-coordinate MIG as disentanglement_lib computes
it, reported beside them.

The rest of this docstring describes `paper_mig`. Estimator choice, per factor group
(`*_mode`):

* 'discrete' -> Ross (2014) kNN estimator of I(label; vector) (`knn.mi_discrete_continuous`).
  Sound when every label occurs at least k + 1 times; a label that occurs once raises.
* 'continuous' -> the factors are ordinal coordinates (positions on a grid) and we use the
  KSG estimator (`knn.mi_ksg`) between the seeded-jittered factor vector and the latent:
  the jitter leaves the MI unchanged and every sample is used even when each joint label
  is unique (two sprites' x, y: 32^4 labels); see `knn`. In a standardised 128-wide z_c
  the two modes disagree.
* 'auto' -> 'discrete' if every joint label occurs >= k + 1 times, else 'continuous'.
  The estimate then depends on which side of that line N falls, so evaluation never uses
  it: `config.eval.knn_content_mode` / `knn_pose_mode` name the estimator.

H(f) normalises each half ('matched' normaliser, default). For a Ross group it is the
Grassberger (2003) estimate on the joint label counts, as the paper. For a KSG group it is
`knn.entropy_ksg_self`: the same KSG estimator applied to two independently jittered
copies of the factor, I(f + u; f + u') = H(f) exactly. The match matters: with 32^4 pose
labels and N = 1e5 no kNN estimate can exceed about psi(N) - psi(k) ~ ln N - 0.9 nats,
while H(f_p) = ln 32^4 = 13.9 (and Grassberger, blind to the ordering, gives ~ ln N + 1.3),
so an unmatched normaliser caps a perfect pose latent's term near 0.77 for reasons that
have nothing to do with the model. With the matched one a perfect latent scores ~1 and an
independent one ~0. The Grassberger and exact log-cardinality values are reported too,
and `normaliser=` selects them instead. The kNN estimates are not clipped at 0: they are
estimates, not bounds, and a signed metric needs their noise to average out, not to be
rectified. (The probe's held-out lower bounds are: see `mig_from_bounds`.)

When a latent is wider than `knn.TREE_MAX_DIM` (z_c), both factor groups' MIs on it come
from one brute-force pass over its N x N distances (`knn.brute_pass`).

Every latent coordinate is standardised (MI is invariant to per-coordinate affine maps)
so no coordinate dominates the norm; factors in 'continuous' mode are too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from mipae_jax.metrics import knn, probe

# ----------------------------------------------------------------------------- paper MIG


def _resolve_mode(mode: str, counts: np.ndarray, k: int) -> str:
  if mode == 'auto':
    return 'discrete' if counts.min() >= k + 1 else 'continuous'
  if mode not in ('discrete', 'continuous'):
    raise ValueError(f'mode must be auto, discrete or continuous, got {mode!r}')
  return mode


def paper_mig(z_c, z_p, content, pose, k: int = 3, *, content_mode: str = 'auto',
              pose_mode: str = 'auto', content_cardinality: Sequence[int] | None = None,
              pose_cardinality: Sequence[int] | None = None,
              normaliser: str = 'matched', jitter: float = knn.DEFAULT_JITTER,
              seed: int = 0) -> dict:
  """The paper's signed MIG (eq. 8) over whole latent vectors with kNN MIs, in nats.

  Args:
    z_c: content latents [N, Dc].
    z_p: pose latents [N, Dp].
    content: content factors [N, Kc] (int; one joint label per distinct row).
    pose: pose factors [N, Kp] (int, ordinal for 'continuous' mode).
    k: neighbours for the kNN estimators.
    content_mode, pose_mode: 'auto' | 'discrete' (Ross) | 'continuous' (KSG on jittered
      ordinal factors); see the module docstring for why and when.
    content_cardinality, pose_cardinality: levels per factor (only for reporting the
      exact entropy log(prod), or for normaliser='log_cardinality'; the factors must
      then be uniform on the full grid).
    normaliser: 'matched' (default: Grassberger for Ross groups,
      `knn.entropy_ksg_self` for KSG groups), 'grassberger' or 'log_cardinality' for
      every group.
    jitter: tie-breaking noise amplitude in grid steps for 'continuous' factors.
    seed: seeds that jitter.

  Returns:
    dict of python floats/strings: I_fc_zc, I_fc_zp, I_fp_zc, I_fp_zp, H_fc, H_fp, mig,
    content_term, pose_term (the two normalised halves before the 0.5 weights),
    estimator_fc, estimator_fp, H_estimator_fc, H_estimator_fp, H_grassberger_*,
    H_log_cardinality_* (None without cardinalities), n_labels_fc,
    n_labels_fp, singleton_fraction_fp, n_samples (all used), k, ksg_ceiling, seconds,
    seconds_by_part (dict).
  """
  t0 = time.perf_counter()
  z_c, z_p = knn.standardise(z_c), knn.standardise(z_p)
  content, pose = knn.as_2d(content), knn.as_2d(pose)
  n = len(z_c)
  if not (len(z_p) == len(content) == len(pose) == n):
    raise ValueError('z_c, z_p, content and pose need the same number of rows')
  groups = {}
  for name, f, mode, card, off in (('fc', content, content_mode, content_cardinality, 1),
                                   ('fp', pose, pose_mode, pose_cardinality, 2)):
    ids, counts = knn.joint_labels(f)
    g = {'ids': ids, 'counts': counts, 'mode': _resolve_mode(mode, counts, k)}
    if g['mode'] == 'continuous':
      g['x'] = knn.standardise(knn.jitter_factors(f, jitter, seed + off))
    g['H_grassberger'] = knn.entropy_grassberger(f)
    g['H_log_card'] = (float(np.sum(np.log(np.asarray(card, np.float64))))
                       if card is not None else None)
    if normaliser == 'log_cardinality':
      if card is None:
        raise ValueError('normaliser=log_cardinality needs the factor cardinalities')
      g['H'], g['H_est'] = g['H_log_card'], 'log_cardinality'
    elif normaliser == 'grassberger' or g['mode'] == 'discrete':
      g['H'], g['H_est'] = g['H_grassberger'], 'grassberger'
    elif normaliser == 'matched':
      g['H'], g['H_est'] = knn.entropy_ksg_self(f, k, jitter, seed + off), 'ksg_self'
    else:
      raise ValueError(f'unknown normaliser {normaliser!r}')
    groups[name] = g

  mi, timing = {}, {'setup_and_entropies': time.perf_counter() - t0}
  # Brute-force (high-dimensional) latents: both factor groups share one distance pass.
  for zname, z in (('zc', z_c), ('zp', z_p)):
    brute = {g: knn.resolve_backend(z.shape[1] + (groups[g]['x'].shape[1]
                                                  if groups[g]['mode'] == 'continuous'
                                                  else 0),
                                    'auto') == 'brute' for g in groups}
    ross_g = [g for g in groups if brute[g] and groups[g]['mode'] == 'discrete']
    ksg_g = [g for g in groups if brute[g] and groups[g]['mode'] == 'continuous']
    t = time.perf_counter()
    if ross_g or ksg_g:
      order = (np.argsort(groups[ross_g[0]]['ids'], kind='stable') if ross_g
               else np.arange(n))
      res = knn.brute_pass(z[order], k,
                           ross_ids=groups[ross_g[0]]['ids'][order] if ross_g else None,
                           ksg_x=groups[ksg_g[0]]['x'][order] if ksg_g else None)
      if ross_g:
        g = groups[ross_g[0]]
        mi[f'I_{ross_g[0]}_{zname}'] = knn.ross_from_counts(
            n, g['counts'][g['ids']], res['ross_k'], res['ross_m'])
      if ksg_g:
        mi[f'I_{ksg_g[0]}_{zname}'] = knn.ksg_from_counts(n, k, res['ksg_nx'],
                                                          res['ksg_nz'])
      # A second group of the same kind needs its own pass.
      for g in ross_g[1:]:
        mi[f'I_{g}_{zname}'] = knn.mi_discrete_continuous(groups[g]['ids'], z, k)
      for g in ksg_g[1:]:
        mi[f'I_{g}_{zname}'] = knn.mi_ksg(groups[g]['x'], z, k)
      timing[f'brute_pass_{zname}'] = time.perf_counter() - t
    for g in groups:
      if not brute[g]:
        t = time.perf_counter()
        mi[f'I_{g}_{zname}'] = (knn.mi_discrete_continuous(groups[g]['ids'], z, k)
                                if groups[g]['mode'] == 'discrete'
                                else knn.mi_ksg(groups[g]['x'], z, k))
        timing[f'I_{g}_{zname}'] = time.perf_counter() - t

  h_c, h_p = groups['fc']['H'], groups['fp']['H']
  content_term = (mi['I_fc_zc'] - mi['I_fc_zp']) / h_c
  pose_term = (mi['I_fp_zp'] - mi['I_fp_zc']) / h_p
  est = {'discrete': 'ross', 'continuous': 'ksg'}
  return {
      'I_fc_zc': mi['I_fc_zc'], 'I_fc_zp': mi['I_fc_zp'],
      'I_fp_zc': mi['I_fp_zc'], 'I_fp_zp': mi['I_fp_zp'],
      'H_fc': h_c, 'H_fp': h_p,
      'mig': 0.5 * content_term + 0.5 * pose_term,
      'content_term': content_term, 'pose_term': pose_term,
      'estimator_fc': est[groups['fc']['mode']], 'estimator_fp': est[groups['fp']['mode']],
      'H_estimator_fc': groups['fc']['H_est'], 'H_estimator_fp': groups['fp']['H_est'],
      'H_grassberger_fc': groups['fc']['H_grassberger'],
      'H_grassberger_fp': groups['fp']['H_grassberger'],
      'H_log_cardinality_fc': groups['fc']['H_log_card'],
      'H_log_cardinality_fp': groups['fp']['H_log_card'],
      'n_labels_fc': len(groups['fc']['counts']), 'n_labels_fp': len(groups['fp']['counts']),
      'singleton_fraction_fp': float(np.sum(groups['fp']['counts'] == 1) / n),
      'n_samples': n, 'k': k, 'ksg_ceiling': knn.ksg_ceiling(n, k),
      'seconds': time.perf_counter() - t0, 'seconds_by_part': timing,
  }


# ----------------------------------------------------------------------------- probe MIG

MI_KEYS = ('I_fc_zc', 'I_fc_zp', 'I_fp_zc', 'I_fp_zp')


def mig_from_bounds(bounds: dict, c_fc: float, c_fp: float) -> dict:
  """The four MIs and the signed MIG (eq. 8) from held-out lower bounds (nats).

  A bound below 0 is a valid bound on a quantity that is never negative, and says no
  more than I >= 0 (a probe scored on a few held-out frames does worse than the prior),
  so each MI is reported as max(0, bound) and the MIG is computed from those. The
  unclipped numbers stay under 'raw'.

  Args:
    bounds: {'I_fc_zc', 'I_fc_zp', 'I_fp_zc', 'I_fp_zp': held-out bound}.
    c_fc, c_fp: the halves' normalisers (the ceilings C(fc), C(fp)).

  Returns:
    dict: the four MIs (clipped), mig, content_term, pose_term; 'raw' (the same keys
    from the unclipped bounds) and 'clipped' (the MI keys whose bound was below 0).
  """

  def signed(mi):
    content_term = (mi['I_fc_zc'] - mi['I_fc_zp']) / c_fc
    pose_term = (mi['I_fp_zp'] - mi['I_fp_zc']) / c_fp
    return {**mi, 'mig': 0.5 * content_term + 0.5 * pose_term,
            'content_term': content_term, 'pose_term': pose_term}

  raw = {key: float(bounds[key]) for key in MI_KEYS}
  return {**signed({key: max(0.0, v) for key, v in raw.items()}), 'raw': signed(raw),
          'clipped': [key for key in MI_KEYS if raw[key] < 0]}


def probe_mig(z_c, z_p, content, pose, content_groups=None, pose_groups=None,
              config: probe.ProbeConfig = probe.DEFAULT) -> dict:
  """The paper's signed MIG (eq. 8) with held-out probe lower bounds for the four MIs.

  Args:
    z_c: content latents [N, Dc]; z_p: pose latents [N, Dp].
    content: content factors [N, Kc] (int); pose: pose factors [N, Kp] (int).
    content_groups, pose_groups: `FactorGroup`s over the columns (a dataset's
      `factor_groups()`); None: `probe.default_groups` (content joint, pose ordinal
      columns, entropies estimated).
    config: the probe (`probe.ProbeConfig`); one fixed setting for every term.

  Each half is normalised by the ceiling C(f) = I(f; image) where the dataset knows that
  some factor values render alike (else C = H(f)): no encoder can hold more about f than
  the frame does, so a perfect model scores 1, an independent one 0, a swapped one -1.

  Returns:
    dict: I_fc_zc, I_fc_zp, I_fp_zc, I_fp_zp (nats; a negative bound reported as 0, see
    `mig_from_bounds`), H_fc, H_fp, C_fc, C_fp, mig, content_term, pose_term, raw (the
    same from the unclipped bounds), clipped (the MIs reported as 0), estimator
    ('probe'), probe (its description), terms ({'I_fc_zc': per-group details, ...}),
    n_samples, seconds, seconds_by_part.
  """
  t0 = time.perf_counter()
  content, pose = knn.as_2d(content), knn.as_2d(pose)
  n = len(content)
  if not (len(z_c) == len(z_p) == len(pose) == n):
    raise ValueError('z_c, z_p, content and pose need the same number of rows')
  if content_groups is None:
    content_groups = probe.default_groups(content)
  if pose_groups is None:
    pose_groups = probe.default_groups(pose, ordinal=True)
  terms, timing = {}, {}
  for zname, z in (('zc', z_c), ('zp', z_p)):
    for fname, f, groups in (('fc', content, content_groups), ('fp', pose, pose_groups)):
      key = f'I_{fname}_{zname}'
      terms[key] = probe.mi_lower_bound(z, f, groups, config)
      timing[key] = terms[key]['seconds']
  h = {'fc': terms['I_fc_zc']['H'], 'fp': terms['I_fp_zc']['H']}
  ceil = {}
  for fname, groups in (('fc', content_groups), ('fp', pose_groups)):
    per = terms[f'I_{fname}_zc']['groups']
    ceil[fname] = sum(g.ceiling if g.ceiling is not None else per[g.name]['H']
                      for g in groups)
  reported = mig_from_bounds({key: t['mi'] for key, t in terms.items()}, ceil['fc'],
                             ceil['fp'])
  return {
      **reported, 'H_fc': h['fc'], 'H_fp': h['fp'], 'C_fc': ceil['fc'], 'C_fp': ceil['fp'],
      'estimator': 'probe', 'probe': config.describe(),
      'groups_fc': [g.name for g in content_groups], 'groups_fp': [g.name for g in pose_groups],
      'terms': {key: {k: v for k, v in t.items() if k != 'seconds'} for key, t in terms.items()},
      'n_samples': n, 'seconds': time.perf_counter() - t0, 'seconds_by_part': timing,
  }


# ----------------------------------------------------------------------------- classic MIG


def _discretise(z: np.ndarray, num_bins: int) -> np.ndarray:
  """Each column into num_bins equal-width bins over its own range (disentanglement_lib)."""
  out = np.zeros(z.shape, np.int64)
  for j in range(z.shape[1]):
    edges = np.histogram(z[:, j], num_bins)[1]
    out[:, j] = np.digitize(z[:, j], edges[:-1])
  return out


def _plugin_mi(a: np.ndarray, b: np.ndarray) -> float:
  """Plug-in MI in nats between two discrete label vectors [N] (sklearn's formula)."""
  _, ai = np.unique(a, return_inverse=True)
  _, bi = np.unique(b, return_inverse=True)
  joint = np.zeros((ai.max() + 1, bi.max() + 1))
  np.add.at(joint, (ai.reshape(-1), bi.reshape(-1)), 1)
  p = joint / joint.sum()
  pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
  nz = p > 0
  return float(np.sum(p[nz] * np.log(p[nz] / (pa @ pb)[nz])))


def classic_mig_details(z, factors, num_bins: int = 20) -> dict:
  """Chen et al. (2018) MIG as disentanglement_lib computes it, with its parts.

  z [N, D] latents, factors [N, K] discrete. Returns dict: mi [D, K] (nats), entropy [K],
  gaps [K] = (top1 - top2) / H(factor) (NaN for a constant factor), mig (mean over the
  non-constant factors).
  """
  z, f = knn.as_2d(z), knn.as_2d(factors)
  zb = _discretise(z, num_bins)
  mi = np.array([[_plugin_mi(zb[:, d], f[:, j]) for j in range(f.shape[1])]
                 for d in range(z.shape[1])])
  ent = np.array([_plugin_mi(f[:, j], f[:, j]) for j in range(f.shape[1])])
  top = -np.sort(-mi, axis=0)
  second = top[1] if z.shape[1] > 1 else np.zeros_like(top[0])
  with np.errstate(divide='ignore', invalid='ignore'):
    gaps = np.where(ent > 0, (top[0] - second) / ent, np.nan)
  return {'mi': mi, 'entropy': ent, 'gaps': gaps, 'mig': float(np.nanmean(gaps))}


def classic_mig(z, factors, num_bins: int = 20) -> float:
  """Chen et al. (2018) MIG (disentanglement_lib). z [N, D], factors [N, K] -> float."""
  return classic_mig_details(z, factors, num_bins)['mig']
