"""Mutual-information gap (MIG): the paper's signed, whole-vector form and Chen et al.'s.

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
* `paper_mig` (`'paper'`, the paper's protocol): k-nearest-neighbour estimators, below.
  In the 128 dimensions of z_c the kNN distances are dominated by the content code, so
  pose information there is nearly invisible to them: on a latent whose z_c holds the
  whole position (6.93 nats) they report a small fraction of it, less than they report
  for a 2-d linear projection of the same z_c, which no function of z_c can exceed.
  Kept for comparison with the paper's Table 1.

The rest of this docstring describes the kNN estimators.

Estimator choice, per factor group (`*_mode`):

* 'discrete' -> Ross (2014) kNN estimator of I(label; vector). Sound when every label
  occurs at least k + 1 times. A class of size n_c <= k uses k_i = n_c - 1; a label that
  occurs once has no within-class neighbour and the estimator is undefined for it, so we
  raise instead of silently dropping the sample (what the published code did).
* 'continuous' -> the factors are ordinal coordinates (positions on a grid) and we use the
  KSG estimator (Kraskov et al. 2004, estimator 1) between the factor vector and the
  latent. Integer ties are broken by a tiny seeded jitter u, |u| <= jitter / 2 < 0.5 grid
  steps; because f = round(f + u) and u is independent of everything,
  I(f + u; z) = I(f; z) exactly, so the estimand is unchanged and every sample is used
  even when each joint label is unique (two sprites' x, y: 32^4 labels). KSG with tiny
  jitter reduces to Ross (n_x = class size) only where the k-th neighbour radius in the
  latent is small against the factor's grid step; in a standardised 128-wide z_c it is
  not (median radius about the grid step), and the two modes then disagree.
* 'auto' -> 'discrete' if every joint label occurs >= k + 1 times, else 'continuous'.
  The estimate then depends on which side of that line N falls, so evaluation never uses
  it: `config.eval.knn_content_mode` / `knn_pose_mode` name the estimator.

H(f) normalises each half ('matched' normaliser, default). For a Ross group it is the
Grassberger (2003) estimate on the joint label counts, as the paper. For a KSG group it is
`entropy_ksg_self`: the same KSG estimator applied to two independently jittered copies
of the factor, I(f + u; f + u') = H(f) exactly. The match matters: with 32^4 pose labels
and N = 1e5 no kNN estimate can exceed about psi(N) - psi(k) ~ ln N - 0.9 nats, while
H(f_p) = ln 32^4 = 13.9 (and Grassberger, blind to the ordering, gives ~ ln N + 1.3), so
an unmatched normaliser caps a perfect pose latent's term near 0.77 for reasons that have
nothing to do with the model. With the matched one a perfect latent scores ~1 and an
independent one ~0. The Grassberger and exact log-cardinality values are reported too,
and `normaliser=` selects them instead. The kNN estimates are not clipped at 0: they are
estimates, not bounds, and a signed metric needs their noise to average out, not to be
rectified. (The probe's held-out lower bounds are: see `mig_from_bounds`.)

Norms and speed. kNN estimators are valid for any norm used consistently: Ross needs one
norm on the latent space; KSG needs the joint norm max(|dx|_X, |dz|_Z) with any norms
|.|_X, |.|_Z in the marginals (the derivation only uses that the joint ball is the
product of the marginal balls). Spaces of dimension <= TREE_MAX_DIM use scipy's cKDTree
(Ross: Euclidean; KSG: Chebyshev over all coordinates, the classic form). Above it
(z_c is 128 wide) a kd-tree degenerates to brute force, so we compute exact Euclidean
distances blockwise as one matrix product (|a|^2 + |b|^2 - 2ab, BLAS), with the joint
norm max(|dx|_2, |dz|_2). Every count for a query row uses the same distance matrix that
produced its radius, so rounding cannot move the k-th neighbour across the boundary.
Both MIs on z_c share one pass over the N x N distances (row blocks of 512, two threads,
~1.3 GB of buffers); chunk minima prune the radius counts to the few column chunks that
can fall inside a kNN radius. The pass's floor is one N x N x Dc float32 matrix product
(1.3e12 multiply-adds at N = 1e5, Dc = 128); `python -m mipae_jax.metrics.mig
--benchmark` times the whole metric.

Every latent coordinate is standardised (MI is invariant to per-coordinate affine maps)
so no coordinate dominates the norm; factors in 'continuous' mode are too.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import special
from scipy.spatial import cKDTree

from mipae_jax.metrics import probe

# Above this dimension cKDTree is no faster than brute force.
TREE_MAX_DIM = 16
# Query rows per block in the brute-force pass: [512, N] float32 is 200 MB at N = 1e5.
_BLOCK_ROWS = 512
# Column chunk used to find the k-th smallest distance of a row without a full sort.
_CHUNK = 256
# Default jitter amplitude for ordinal factors, in grid steps (any value < 1 keeps MI).
DEFAULT_JITTER = 1e-2


# ----------------------------------------------------------------------------- helpers


def _as_2d(a) -> np.ndarray:
  a = np.asarray(a)
  return a[:, None] if a.ndim == 1 else a.reshape(a.shape[0], -1)


def joint_labels(factors) -> tuple[np.ndarray, np.ndarray]:
  """Joint label id per sample. factors [N] or [N, K] -> (ids [N], counts [L])."""
  f = _as_2d(factors)
  _, ids, counts = np.unique(f, axis=0, return_inverse=True, return_counts=True)
  return ids.reshape(-1), counts


def _standardise(z) -> np.ndarray:
  z = _as_2d(z).astype(np.float64)
  std = z.std(axis=0)
  # A dead coordinate carries no information; leave it at 0 instead of dividing by 0.
  return (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)


def jitter_factors(factors, jitter: float = DEFAULT_JITTER, seed: int = 0) -> np.ndarray:
  """Ordinal factors [N, K] -> float [N, K] with seeded uniform noise in +-jitter/2."""
  f = _as_2d(factors).astype(np.float64)
  rng = np.random.default_rng(seed)
  return f + jitter * (rng.random(f.shape) - 0.5)


def _mean_digamma(n) -> float:
  return float(np.mean(special.digamma(np.asarray(n, np.float64))))


# ----------------------------------------------------------------------------- entropy


def entropy_grassberger(labels) -> float:
  """Grassberger (2003) entropy estimate in nats. labels [N] or [N, K] (joint).

  H = ln N - 1/N sum_c n_c G(n_c), G(n) = psi(n) + 0.5 (-1)^n (psi((n+1)/2) - psi(n/2)).
  Less biased than the plug-in estimate when many labels are rare.
  """
  _, counts = joint_labels(labels)
  n = counts.astype(np.float64)
  g = special.digamma(n) + 0.5 * (-1.0) ** n * (
      special.digamma((n + 1) / 2) - special.digamma(n / 2))
  total = n.sum()
  return float(np.log(total) - np.sum(n * g) / total)


def entropy_ksg_self(factors, k: int = 3, jitter: float = DEFAULT_JITTER,
                     seed: int = 0) -> float:
  """H(f) in nats as the KSG estimate of I(f + u; f + u') for ordinal factors [N, K].

  u, u' are independent tie-breaking jitters (|u| < 0.5 steps), so f is recoverable from
  either copy and I(f + u; f + u') = H(f) exactly: a consistent entropy estimator that
  shares the finite-sample ceiling of the KSG estimates it normalises.
  """
  f = _as_2d(factors)
  a = jitter_factors(f, jitter, seed + 1000)
  b = jitter_factors(f, jitter, seed + 2000)
  return mi_ksg(a, b, k)


def entropy_plugin(labels) -> float:
  """Plug-in (maximum-likelihood) entropy in nats. labels [N] or [N, K] (joint)."""
  _, counts = joint_labels(labels)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)))


# ----------------------------------------------------------------------------- kNN core


def _chunks(v: np.ndarray) -> np.ndarray:
  """[B, M] -> [B, G, _CHUNK]: runs of contiguous columns.

  (Strided chunks reduce twice as fast but gathering them for the counts costs more.)
  """
  return v.reshape(len(v), -1, _CHUNK)


def _chunk_min(v: np.ndarray) -> np.ndarray:
  """[B, M] -> [B, G] minimum of every column chunk."""
  return _chunks(v).min(axis=2)


def _kth_smallest(v: np.ndarray, k: int) -> np.ndarray:
  """k-th smallest entry of every row. v [B, M] with M a multiple of _CHUNK -> [B].

  The k chunks with the smallest minima hold the k smallest entries (any entry below
  the largest of those minima would make its own chunk's minimum smaller), so one cheap
  min-reduction plus a partition of k * _CHUNK values replaces a full-row partition.
  """
  b, m = v.shape
  g = m // _CHUNK
  if g <= k:
    return np.partition(v, k - 1, axis=1)[:, k - 1]
  best = np.argpartition(_chunk_min(v), k - 1, axis=1)[:, :k]
  cand = np.take_along_axis(_chunks(v), best[:, :, None], axis=1).reshape(b, -1)
  return np.partition(cand, k - 1, axis=1)[:, k - 1]


class _SqDist:
  """Blockwise squared Euclidean distances via one matrix product per block.

  Rows of [a, |a|^2, 1] . [-2b, 1, |b|^2] give |a - b|^2. Columns are padded to a
  multiple of _CHUNK; padded columns read +inf so they are never neighbours.
  """

  def __init__(self, z: np.ndarray):
    z = np.asarray(z, np.float64)
    z = z - z.mean(axis=0)  # centring keeps |a|^2 small, which limits cancellation
    n = len(z)
    self.n = n
    self.m = -(-n // _CHUNK) * _CHUNK
    sq = np.sum(z * z, axis=1, keepdims=True)
    ones = np.ones_like(sq)
    self.q = np.hstack([z, sq, ones]).astype(np.float32)
    cols = np.hstack([-2 * z, ones, sq]).astype(np.float32)
    self.cols = np.zeros((self.m, cols.shape[1]), np.float32)
    self.cols[:n] = cols

  def block(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
    """[stop - start, M] squared distances; self-pairs and padding are +inf.

    Written into out [>= stop - start, M]: reusing one buffer avoids paging in 200 MB
    per block, which cost more than the matrix product itself.
    """
    d2 = out[:stop - start]
    np.matmul(self.q[start:stop], self.cols.T, out=d2)
    d2[:, self.n:] = np.inf
    rows = np.arange(stop - start)
    d2[rows, start + rows] = np.inf
    return d2


def _count_true(mask: np.ndarray) -> np.ndarray:
  """Row sums of a bool [B, M] mask (a uint8 sum is ~2x faster than count_nonzero)."""
  return mask.view(np.uint8).sum(axis=1, dtype=np.int64)


def _count_below(d2: np.ndarray, chunk_min: np.ndarray, thr: np.ndarray,
                 inclusive: bool) -> np.ndarray:
  """Per row, #entries of d2 [B, M] below thr [B] (<= if inclusive).

  Only chunks whose minimum passes the test can contribute, so we gather those
  (kNN radii are small: usually a handful of chunks) instead of scanning the row.
  """
  b = len(d2)
  op = np.less_equal if inclusive else np.less
  rows, chunks = np.nonzero(op(chunk_min, thr[:, None]))
  vals = _chunks(d2)[rows, chunks]  # [P, _CHUNK]
  per = _count_true(op(vals, thr[rows, None]))
  return np.bincount(rows, weights=per, minlength=b).astype(np.int64)


def _brute_pass(z: np.ndarray, k: int, ross_ids: np.ndarray | None = None,
                ksg_x: np.ndarray | None = None, threads: int = 2) -> dict:
  """One pass over all pairs for the high-dimensional latent z [N, D].

  ross_ids [N]: class ids, sorted ascending (caller permutes), for Ross counts.
  ksg_x [N, Dx]: continuous factors for KSG counts against z.
  threads: row blocks processed concurrently (numpy releases the GIL in the matrix
    products and reductions; the elementwise work is otherwise single-core).
  Returns dict with 'ross_k' [N], 'ross_m' [N] and/or 'ksg_nx' [N], 'ksg_nz' [N].
  """
  dz = _SqDist(z)
  dx = _SqDist(ksg_x) if ksg_x is not None else None
  n, m = dz.n, dz.m
  out = {}
  if ross_ids is not None:
    assert np.all(np.diff(ross_ids) >= 0), 'ross_ids must be sorted'
    bounds = np.searchsorted(ross_ids, np.arange(ross_ids[-1] + 2))
    sizes = np.diff(bounds)
    if sizes[sizes > 0].min() < 2:
      raise ValueError('a label occurs once; Ross is undefined, use continuous mode')
    out['ross_k'] = np.minimum(k, sizes[ross_ids] - 1)
    out['ross_m'] = np.zeros(n, np.int64)
  if dx is not None:
    out['ksg_nx'] = np.zeros(n, np.int64)
    out['ksg_nz'] = np.zeros(n, np.int64)
  rows = min(_BLOCK_ROWS, n)
  local = threading.local()

  def buffers():
    if not hasattr(local, 'z'):
      local.z = np.empty((rows, m), np.float32)
      if dx is not None:
        local.x = np.empty((rows, m), np.float32)
        local.j = np.empty((rows, m), np.float32)
        local.mask = np.empty((rows, m), bool)
    return local

  def work(start):
    stop = min(start + _BLOCK_ROWS, n)
    buf = buffers()
    d2 = dz.block(start, stop, buf.z)
    chunk_min = _chunk_min(d2)
    if ross_ids is not None:
      # Classes are contiguous column ranges, so the within-class distances are slices
      # of the same matrix the counts use: rounding cannot drop the k-th neighbour.
      r2 = np.empty(stop - start, np.float32)
      row = start
      while row < stop:
        c_lo, c_hi = bounds[ross_ids[row]], bounds[ross_ids[row] + 1]
        r_hi = min(c_hi, stop)
        k_c = int(min(k, c_hi - c_lo - 1))
        sub = d2[row - start:r_hi - start, c_lo:c_hi]
        r2[row - start:r_hi - start] = np.partition(sub, k_c - 1, axis=1)[:, k_c - 1]
        row = r_hi
      out['ross_m'][start:stop] = _count_below(d2, chunk_min, r2, inclusive=True)
    if dx is not None:
      x2 = dx.block(start, stop, buf.x)
      # The joint distance is max(|dx|, |dz|); compare squares.
      e2 = _kth_smallest(np.maximum(d2, x2, out=buf.j[:stop - start]), k)
      out['ksg_nz'][start:stop] = _count_below(d2, chunk_min, e2, inclusive=False)
      mask = buf.mask[:stop - start]
      np.less(x2, e2[:, None], out=mask)
      out['ksg_nx'][start:stop] = _count_true(mask)

  starts = range(0, n, _BLOCK_ROWS)
  if threads > 1 and len(starts) > 1:
    with ThreadPoolExecutor(threads) as pool:
      list(pool.map(work, starts))
  else:
    for start in starts:
      work(start)
  return out


def _ross_from_counts(n: int, class_sizes, ks, ms) -> float:
  # Ross (2014) eq. 2: psi(N) - <psi(N_x)> + <psi(k)> - <psi(m)>.
  return float(special.digamma(n) - _mean_digamma(class_sizes) + _mean_digamma(ks)
               - _mean_digamma(ms))


def _ksg_from_counts(n: int, k: int, nx, nz) -> float:
  # Kraskov et al. (2004) estimator 1: psi(k) + psi(N) - <psi(n_x + 1) + psi(n_z + 1)>.
  return float(special.digamma(k) + special.digamma(n) - _mean_digamma(np.asarray(nx) + 1)
               - _mean_digamma(np.asarray(nz) + 1))


def _backend(dim: int, backend: str) -> str:
  if backend == 'auto':
    return 'tree' if dim <= TREE_MAX_DIM else 'brute'
  if backend not in ('tree', 'brute'):
    raise ValueError(f'backend must be auto, tree or brute, got {backend!r}')
  return backend


# ----------------------------------------------------------------------------- estimators


def mi_discrete_continuous(labels, z, k: int = 3, *, backend: str = 'auto',
                           norm: str = 'euclidean') -> float:
  """Ross (2014) kNN estimate of I(label; z) in nats, using every sample.

  labels [N] or [N, K] (joint label per row), z [N, D] continuous, standardised here.
  norm: 'euclidean' (default, both backends agree exactly) or 'chebyshev' (Ross' and
  sklearn's choice; tree backend only). A class with n_c <= k uses k_i = n_c - 1; a
  label that occurs once raises ValueError (use `mi_ksg` on ordinal factors instead).
  """
  if norm not in ('euclidean', 'chebyshev'):
    raise ValueError(f'norm must be euclidean or chebyshev, got {norm!r}')
  ids, counts = joint_labels(labels)
  z = _standardise(z)
  n = len(ids)
  if counts.min() < 2:
    raise ValueError(
        f'{int(np.sum(counts == 1))} labels occur once; Ross needs >= 2 per class '
        '(>= k + 1 to be unbiased). Treat the factors as ordinal and use mi_ksg.')
  sizes = counts[ids]
  if _backend(z.shape[1], backend) == 'brute':
    if norm != 'euclidean':
      raise ValueError('the brute-force backend computes Euclidean distances only')
    order = np.argsort(ids, kind='stable')
    res = _brute_pass(z[order], k, ross_ids=ids[order])
    return _ross_from_counts(n, sizes, res['ross_k'], res['ross_m'])
  ks = np.minimum(k, sizes - 1)
  p = 2 if norm == 'euclidean' else np.inf
  radius = np.empty(n)
  order = np.argsort(ids, kind='stable')
  for members in np.split(order, np.cumsum(counts)[:-1]):
    k_c = int(min(k, len(members) - 1))
    d, _ = cKDTree(z[members]).query(z[members], k=k_c + 1, p=p)
    radius[members] = d[:, k_c]
  # Ross counts neighbours within d including the k-th itself; the relative slack
  # guards against the ball test rounding the boundary point out.
  m = cKDTree(z).query_ball_point(z, r=radius * (1 + 1e-9), p=p, return_length=True,
                                  workers=-1) - 1
  return _ross_from_counts(n, sizes, ks, m)


def mi_ksg(x, z, k: int = 3, *, backend: str = 'auto') -> float:
  """KSG estimator 1 (Kraskov et al. 2004) of I(x; z) in nats.

  x [N, Dx], z [N, D] continuous (jitter integer factors first: `jitter_factors`); both
  are standardised per coordinate. 'tree': Chebyshev norm over all coordinates with
  cKDTree; 'brute': joint norm max(|dx|_2, |dz|_2) from blockwise matrix products.
  """
  x, z = _standardise(x), _standardise(z)
  n = len(x)
  if _backend(x.shape[1] + z.shape[1], backend) == 'brute':
    res = _brute_pass(z, k, ksg_x=x)
    return _ksg_from_counts(n, k, res['ksg_nx'], res['ksg_nz'])
  d, _ = cKDTree(np.hstack([x, z])).query(np.hstack([x, z]), k=k + 1, p=np.inf,
                                          workers=-1)
  # Strictly inside the joint radius, self excluded.
  r = np.nextafter(d[:, k], 0)
  nx = cKDTree(x).query_ball_point(x, r=r, p=np.inf, return_length=True, workers=-1) - 1
  nz = cKDTree(z).query_ball_point(z, r=r, p=np.inf, return_length=True, workers=-1) - 1
  return _ksg_from_counts(n, k, nx, nz)


def ksg_ceiling(n: int, k: int = 3) -> float:
  """Largest MI (nats) KSG reports with n samples: psi(n) - psi(k)."""
  return float(special.digamma(n) - special.digamma(k))


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
              normaliser: str = 'matched', jitter: float = DEFAULT_JITTER,
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
    normaliser: 'matched' (default: Grassberger for Ross groups, `entropy_ksg_self` for
      KSG groups), 'grassberger' or 'log_cardinality' for every group.
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
  z_c, z_p = _standardise(z_c), _standardise(z_p)
  content, pose = _as_2d(content), _as_2d(pose)
  n = len(z_c)
  if not (len(z_p) == len(content) == len(pose) == n):
    raise ValueError('z_c, z_p, content and pose need the same number of rows')
  groups = {}
  for name, f, mode, card, off in (('fc', content, content_mode, content_cardinality, 1),
                                   ('fp', pose, pose_mode, pose_cardinality, 2)):
    ids, counts = joint_labels(f)
    g = {'ids': ids, 'counts': counts, 'mode': _resolve_mode(mode, counts, k)}
    if g['mode'] == 'continuous':
      g['x'] = _standardise(jitter_factors(f, jitter, seed + off))
    g['H_grassberger'] = entropy_grassberger(f)
    g['H_log_card'] = (float(np.sum(np.log(np.asarray(card, np.float64))))
                       if card is not None else None)
    if normaliser == 'log_cardinality':
      if card is None:
        raise ValueError('normaliser=log_cardinality needs the factor cardinalities')
      g['H'], g['H_est'] = g['H_log_card'], 'log_cardinality'
    elif normaliser == 'grassberger' or g['mode'] == 'discrete':
      g['H'], g['H_est'] = g['H_grassberger'], 'grassberger'
    elif normaliser == 'matched':
      g['H'], g['H_est'] = entropy_ksg_self(f, k, jitter, seed + off), 'ksg_self'
    else:
      raise ValueError(f'unknown normaliser {normaliser!r}')
    groups[name] = g

  mi, timing = {}, {'setup_and_entropies': time.perf_counter() - t0}
  # Brute-force (high-dimensional) latents: both factor groups share one distance pass.
  for zname, z in (('zc', z_c), ('zp', z_p)):
    brute = {g: _backend(z.shape[1] + (groups[g]['x'].shape[1]
                                       if groups[g]['mode'] == 'continuous' else 0),
                         'auto') == 'brute' for g in groups}
    ross_g = [g for g in groups if brute[g] and groups[g]['mode'] == 'discrete']
    ksg_g = [g for g in groups if brute[g] and groups[g]['mode'] == 'continuous']
    t = time.perf_counter()
    if ross_g or ksg_g:
      order = (np.argsort(groups[ross_g[0]]['ids'], kind='stable') if ross_g
               else np.arange(n))
      res = _brute_pass(z[order], k,
                        ross_ids=groups[ross_g[0]]['ids'][order] if ross_g else None,
                        ksg_x=groups[ksg_g[0]]['x'][order] if ksg_g else None)
      if ross_g:
        g = groups[ross_g[0]]
        mi[f'I_{ross_g[0]}_{zname}'] = _ross_from_counts(
            n, g['counts'][g['ids']], res['ross_k'], res['ross_m'])
      if ksg_g:
        mi[f'I_{ksg_g[0]}_{zname}'] = _ksg_from_counts(n, k, res['ksg_nx'], res['ksg_nz'])
      # A second group of the same kind needs its own pass.
      for g in ross_g[1:]:
        mi[f'I_{g}_{zname}'] = mi_discrete_continuous(groups[g]['ids'], z, k)
      for g in ksg_g[1:]:
        mi[f'I_{g}_{zname}'] = mi_ksg(groups[g]['x'], z, k)
      timing[f'brute_pass_{zname}'] = time.perf_counter() - t
    for g in groups:
      if not brute[g]:
        t = time.perf_counter()
        mi[f'I_{g}_{zname}'] = (mi_discrete_continuous(groups[g]['ids'], z, k)
                                if groups[g]['mode'] == 'discrete'
                                else mi_ksg(groups[g]['x'], z, k))
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
      'n_samples': n, 'k': k, 'ksg_ceiling': ksg_ceiling(n, k),
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
  content, pose = _as_2d(content), _as_2d(pose)
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
  z, f = _as_2d(z), _as_2d(factors)
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


# ----------------------------------------------------------------------------- self-check


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
  """Synthetic cases with known answers. Returns {case: {..., 'ok': bool}}."""
  out = {}
  rng = np.random.default_rng(seed)
  content, pose, z_c, z_p = sprite_like(n, seed)
  card_c, card_p = (3, 6), (32,) * 4

  good = paper_mig(z_c, z_p, content, pose, content_cardinality=card_c,
                   pose_cardinality=card_p)
  # Content is recoverable (I = H) and the pose latent is a low-noise copy of the pose.
  out['copy'] = {**good, 'ok': good['mig'] > 0.85 and good['pose_term'] > 0.75
                 and abs(good['I_fc_zc'] - good['H_fc']) < 0.1 * good['H_fc']}

  noise_c, noise_p = rng.standard_normal(z_c.shape), rng.standard_normal(z_p.shape)
  ind = paper_mig(noise_c, noise_p, content, pose)
  out['independent'] = {
      **ind, 'ok': all(abs(ind[key]) < 0.1 for key in ('I_fc_zc', 'I_fc_zp', 'I_fp_zc',
                                                        'I_fp_zp'))
      and abs(ind['mig']) < 0.05}

  swap = paper_mig(z_p, z_c, content, pose)
  out['swapped'] = {**swap, 'ok': swap['mig'] < -0.5}

  # Every joint pose label unique (n distinct cells of the 32^4 grid): KSG, all samples.
  cells = rng.choice(32 ** 4, n, replace=False)
  pose_u = np.stack(np.unravel_index(cells, card_p), 1)
  _, counts = joint_labels(pose_u)
  zp_u = pose_u / 32 + 0.002 * rng.standard_normal((n, 4))
  uniq = paper_mig(z_c, zp_u, content, pose_u, pose_cardinality=card_p)
  out['unique_pose_labels'] = {
      **uniq, 'unique_fraction': float(np.mean(counts == 1)),
      'ok': uniq['n_samples'] == n and uniq['estimator_fp'] == 'ksg'
      and uniq['pose_term'] > 0.8 and abs(uniq['I_fp_zc']) < 0.1}

  for dim, snr, backend in ((1, 1.0, 'tree'), (2, 3.0, 'tree'), (1, 9.0, 'tree'),
                            (2, 1.0, 'brute'), (1, 9.0, 'brute')):
    x, z, truth = gaussian_channel(n, dim, snr, seed)
    est = mi_ksg(x, z, backend=backend)
    out[f'gauss_ksg_{backend}_d{dim}_snr{snr:g}'] = {
        'estimate': est, 'truth': truth, 'ok': abs(est - truth) < 0.1 * truth}
  for classes, spacing, backend in ((4, 2.0, 'tree'), (8, 1.0, 'tree'), (4, 2.0, 'brute')):
    y, z, truth = label_channel(n, classes, spacing, seed)
    est = mi_discrete_continuous(y, z, backend=backend)
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
  res = paper_mig(z_c, z_p, content, pose)
  groups_c = (probe.FactorGroup('content', (0, 1, 2), entropy=float(np.log(n_c))),)
  groups_p = tuple(probe.FactorGroup(f'p{i}', (i,), ordinal=True, levels=32,
                                     entropy=float(np.log(32))) for i in range(4))
  pres = probe_mig(z_c, z_p, content, pose, groups_c, groups_p)
  return {'n': n, 'dc': dc, 'dp': dp, 'seconds': res['seconds'], 'result': res,
          'probe_seconds': pres['seconds'],
          'probe_result': {k: v for k, v in pres.items() if k != 'terms'}}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--selfcheck', action='store_true',
                      help='the validation suite (metrics.validation) for the probe '
                      'estimator, with the kNN numbers beside it, then the kNN cases')
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
    from mipae_jax.metrics import validation

    suite = validation.run_suite(args.n or 20_000)
    print(validation.format_suite(suite))
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
