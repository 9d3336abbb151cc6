"""k-nearest-neighbour estimators of mutual information and entropy, in nats.

The MIG's kNN protocol (`mig.paper_mig`) is built from these, and the probe takes its
label entropies from `entropy_grassberger`; nothing here knows about content, pose or
the MIG.

* `mi_discrete_continuous`: Ross (2014) kNN estimator of I(label; vector). Sound when
  every label occurs at least k + 1 times. A class of size n_c <= k uses k_i = n_c - 1; a
  label that occurs once has no within-class neighbour and the estimator is undefined for
  it, so we raise instead of silently dropping the sample (what the published code did).
* `mi_ksg`: the KSG estimator (Kraskov et al. 2004, estimator 1) between two continuous
  vectors. Ordinal factors (positions on a grid) enter it through `jitter_factors`:
  integer ties are broken by a tiny seeded jitter u, |u| <= jitter / 2 < 0.5 grid steps;
  because f = round(f + u) and u is independent of everything, I(f + u; z) = I(f; z)
  exactly, so the estimand is unchanged and every sample is used even when each joint
  label is unique (two sprites' x, y: 32^4 labels). KSG with tiny jitter reduces to Ross
  (n_x = class size) only where the k-th neighbour radius in the latent is small against
  the factor's grid step; in a standardised 128-wide z_c it is not (median radius about
  the grid step), and the two then disagree.
* Entropies of labels [N] or joint label rows [N, K]: `entropy_grassberger` (Grassberger
  2003, the one estimate of H from label counts that both the kNN protocol and the probe
  use), `entropy_ksg_self` (KSG between two jittered copies of ordinal factors: shares the
  finite-sample ceiling `ksg_ceiling` of the KSG estimates it normalises) and
  `entropy_plugin`.

Norms and speed. kNN estimators are valid for any norm used consistently: Ross needs one
norm on the latent space; KSG needs the joint norm max(|dx|_X, |dz|_Z) with any norms
|.|_X, |.|_Z in the marginals (the derivation only uses that the joint ball is the
product of the marginal balls). Spaces of dimension <= TREE_MAX_DIM use scipy's cKDTree
(Ross: Euclidean; KSG: Chebyshev over all coordinates, the classic form). Above it
(z_c is 128 wide) a kd-tree degenerates to brute force, so we compute exact Euclidean
distances blockwise as one matrix product (|a|^2 + |b|^2 - 2ab, BLAS), with the joint
norm max(|dx|_2, |dz|_2). Every count for a query row uses the same distance matrix that
produced its radius, so rounding cannot move the k-th neighbour across the boundary.
`brute_pass` computes a Ross and a KSG count on one latent in one pass over the N x N
distances (row blocks of 512, two threads, ~1.3 GB of buffers); chunk minima prune the
radius counts to the few column chunks that can fall inside a kNN radius. The pass's
floor is one N x N x Dc float32 matrix product (1.3e12 multiply-adds at N = 1e5,
Dc = 128); `python -m mipae_jax.metrics.validation --benchmark` times the whole metric.

Every coordinate is standardised (MI is invariant to per-coordinate affine maps) so no
coordinate dominates the norm.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import special
from scipy.spatial import cKDTree

# Above this dimension cKDTree is no faster than brute force.
TREE_MAX_DIM = 16
# Query rows per block in the brute-force pass: [512, N] float32 is 200 MB at N = 1e5.
_BLOCK_ROWS = 512
# Column chunk used to find the k-th smallest distance of a row without a full sort.
_CHUNK = 256
# Default jitter amplitude for ordinal factors, in grid steps (any value < 1 keeps MI).
DEFAULT_JITTER = 1e-2


# ----------------------------------------------------------------------------- helpers


def as_2d(a) -> np.ndarray:
  """[N] -> [N, 1]; [N, ...] -> [N, prod(...)]: one row per sample."""
  a = np.asarray(a)
  return a[:, None] if a.ndim == 1 else a.reshape(a.shape[0], -1)


def joint_labels(factors) -> tuple[np.ndarray, np.ndarray]:
  """Joint label id per sample. factors [N] or [N, K] -> (ids [N], counts [L])."""
  f = as_2d(factors)
  _, ids, counts = np.unique(f, axis=0, return_inverse=True, return_counts=True)
  return ids.reshape(-1), counts


def standardise(z) -> np.ndarray:
  """z [N] or [N, D] -> float64 [N, D] with every coordinate at mean 0, std 1."""
  z = as_2d(z).astype(np.float64)
  std = z.std(axis=0)
  # A dead coordinate carries no information; leave it at 0 instead of dividing by 0.
  return (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)


def jitter_factors(factors, jitter: float = DEFAULT_JITTER, seed: int = 0) -> np.ndarray:
  """Ordinal factors [N, K] -> float [N, K] with seeded uniform noise in +-jitter/2."""
  f = as_2d(factors).astype(np.float64)
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
  f = as_2d(factors)
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


def brute_pass(z: np.ndarray, k: int, ross_ids: np.ndarray | None = None,
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


def ross_from_counts(n: int, class_sizes, ks, ms) -> float:
  """I(label; z) in nats from per-sample counts [N]: class sizes, k_i and m_i."""
  # Ross (2014) eq. 2: psi(N) - <psi(N_x)> + <psi(k)> - <psi(m)>.
  return float(special.digamma(n) - _mean_digamma(class_sizes) + _mean_digamma(ks)
               - _mean_digamma(ms))


def ksg_from_counts(n: int, k: int, nx, nz) -> float:
  """I(x; z) in nats from per-sample marginal neighbour counts nx, nz [N]."""
  # Kraskov et al. (2004) estimator 1: psi(k) + psi(N) - <psi(n_x + 1) + psi(n_z + 1)>.
  return float(special.digamma(k) + special.digamma(n) - _mean_digamma(np.asarray(nx) + 1)
               - _mean_digamma(np.asarray(nz) + 1))


def resolve_backend(dim: int, backend: str) -> str:
  """'auto' | 'tree' | 'brute' -> 'tree' or 'brute' for a space of `dim` coordinates."""
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
  z = standardise(z)
  n = len(ids)
  if counts.min() < 2:
    raise ValueError(
        f'{int(np.sum(counts == 1))} labels occur once; Ross needs >= 2 per class '
        '(>= k + 1 to be unbiased). Treat the factors as ordinal and use mi_ksg.')
  sizes = counts[ids]
  if resolve_backend(z.shape[1], backend) == 'brute':
    if norm != 'euclidean':
      raise ValueError('the brute-force backend computes Euclidean distances only')
    order = np.argsort(ids, kind='stable')
    res = brute_pass(z[order], k, ross_ids=ids[order])
    return ross_from_counts(n, sizes, res['ross_k'], res['ross_m'])
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
  return ross_from_counts(n, sizes, ks, m)


def mi_ksg(x, z, k: int = 3, *, backend: str = 'auto') -> float:
  """KSG estimator 1 (Kraskov et al. 2004) of I(x; z) in nats.

  x [N, Dx], z [N, D] continuous (jitter integer factors first: `jitter_factors`); both
  are standardised per coordinate. 'tree': Chebyshev norm over all coordinates with
  cKDTree; 'brute': joint norm max(|dx|_2, |dz|_2) from blockwise matrix products.
  """
  x, z = standardise(x), standardise(z)
  n = len(x)
  if resolve_backend(x.shape[1] + z.shape[1], backend) == 'brute':
    res = brute_pass(z, k, ksg_x=x)
    return ksg_from_counts(n, k, res['ksg_nx'], res['ksg_nz'])
  d, _ = cKDTree(np.hstack([x, z])).query(np.hstack([x, z]), k=k + 1, p=np.inf,
                                          workers=-1)
  # Strictly inside the joint radius, self excluded.
  r = np.nextafter(d[:, k], 0)
  nx = cKDTree(x).query_ball_point(x, r=r, p=np.inf, return_length=True, workers=-1) - 1
  nz = cKDTree(z).query_ball_point(z, r=r, p=np.inf, return_length=True, workers=-1) - 1
  return ksg_from_counts(n, k, nx, nz)


def ksg_ceiling(n: int, k: int = 3) -> float:
  """Largest MI (nats) KSG reports with n samples: psi(n) - psi(k)."""
  return float(special.digamma(n) - special.digamma(k))

