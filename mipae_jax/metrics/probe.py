"""Held-out variational lower bounds on I(factor; latent): a probe trained in JAX.

For any conditional distribution q(f | z), the cross-entropy CE = E[-log q(f | z)] on
samples the probe did not train on is an unbiased estimate of an upper bound on H(f | z),
so

  I(f; z) = H(f) - H(f | z) >= H(f) - CE                          (Barber & Agakov 2003)

holds for every probe; a better probe only makes the bound tighter. Unlike the kNN
estimators (`mig.paper_mig`), this one is valid in any dimension (z_c is 128 wide),
cannot report more for a function of z than for z itself (up to noise and the probe's
training), and is blind to coordinates that carry nothing, because a classifier learns
to ignore them.

Factors come in `FactorGroup`s (the dataset declares which columns form one categorical
variable and which groups are independent in the sampled population). The probe is a
chain of one softmax per group, q(f | z) = prod_g q_g(f_g | z, f_<g): a proper
distribution over the joint factor, which also counts what only the factors hold
together (a code that mixes x and y pins x once y is known). With population-independent
groups H(f) = sum_g H_g, so

  I(f; z) >= sum_g (H_g - CE_g),   CE_g = held-out E[-log q_g(f_g | z, f_<g)].

The probe (`ProbeConfig`, one fixed setting for every latent and every run):
- inputs standardised with the training split's statistics, plus the least-squares
  read-out of the ordinal factors (an MLP calibrates a few such directions easily, but
  not inside 128 noisy ones at 10^4 frames: without them the probe held less about f_p
  for a trained z_c than for its own 2-d projection);
- an MLP trunk (2 x 256 ReLU), shared by the groups, each group's input being z, the
  earlier groups' labels and the group's index, and a linear skip from that input, so
  the probe contains every linear softmax classifier;
- per group, a softmax over its labels; an ordinal group (a grid coordinate such as x
  or y) also gets a regression of its level (the closed-form least-squares fit plus the
  network's correction) and of its spread, scored as a discretised Gaussian over the
  levels and mixed with the softmax, q = lam N(level; mu, m sigma) + (1 - lam) softmax,
  with the width multiplier m and lam picked on the validation split (for a noisy linear
  code of a position this is the exact Bayes posterior; the softmax covers multi-modal
  posteriors);
- Adam (lr 3e-3, batch 256), frames split 70 / 10 / 20 % into train / validation / test
  by a fixed seed; after each epoch every group's validation CE is measured, and each
  group's bound is its test CE at the epoch of its own best validation CE (early
  stopping: selection never looks at the test frames, which are scored once, at the
  end, with each group's chosen parameters, so the bound stays honest); after
  3 epochs without a validation gain in any group the learning rate drops 4x, and
  training stops at the fourth such plateau or at 100 epochs.

The bound tightens as the probe sees more frames, so estimates from different numbers
of frames are not comparable (on latents with known answers they agree within 0.05
between 20,000 and 40,000 frames; on a trained model's z_c, where the information is
hard to read, they rose by half from 20,000 to 100,000).

One held-out split (20 % of the frames) scores the bound, so its standard error is
std(log q) / sqrt(0.2 N): about 0.01-0.03 nats per term at N = 20,000.

H_g is the population entropy when the dataset knows it (the factor grid and the
sampling rule are known) and a Grassberger estimate on the labels otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mipae_jax.factors import FactorGroup
from mipae_jax.metrics import knn


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """Everything that defines the probe estimator (see the module docstring)."""
  hidden: int = 256
  depth: int = 2
  # 3e-3: as tight as 1e-3 or tighter on a trained model's latents, in fewer epochs (at
  # 1e-3 its I(fp;zp) probe stopped at the epoch cap still improving); 1e-2 lost 1.8 nats
  # of position in a 128-wide z_c.
  learning_rate: float = 3e-3
  batch_size: int = 256
  max_epochs: int = 100
  patience: int = 3  # Epochs without a validation gain before the learning rate drops.
  lr_drops: int = 3  # Drops (x 1/4 each) before training stops.
  train_fraction: float = 0.7
  val_fraction: float = 0.1
  seed: int = 0

  def describe(self) -> str:
    return (f'MLP probe {self.depth} x {self.hidden} ReLU + linear skip, a chain of softmaxes '
            f'over the factor groups (+ a discretised Gaussian for ordinal factors, whose '
            f'least-squares read-out is also an input), Adam lr '
            f'{self.learning_rate:g}, batch {self.batch_size}, split '
            f'{self.train_fraction:.0%}/{self.val_fraction:.0%}/'
            f'{1 - self.train_fraction - self.val_fraction:.0%} train/val/test (seed '
            f'{self.seed}), learning rate / 4 after {self.patience} epochs without a '
            f'validation gain, stop after {self.lr_drops} drops or {self.max_epochs} '
            f'epochs; per-group early stopping on validation CE; I >= H - held-out CE')


DEFAULT = ProbeConfig()  # The setting every report uses.

# The fewest frames at which the estimator is validated: its self-check
# (`metrics.validation.run_suite`, run at 20,000 by `python -m mipae_jax.metrics.validation`
# and by tests/test_probe_mig.py) finds every known-answer MIG within 0.05 at
# this N and within 0.05 of itself at 2N. Below it nothing says the bounds have settled:
# they are looser and move with N and with the frames drawn (eval.seed), so MIs from
# fewer frames are neither stable nor comparable with other runs'. Evaluation warns.
MIN_STABLE_SAMPLES = 20_000


# ----------------------------------------------------------------------------- labels


def encode_groups(factors: np.ndarray, groups: Sequence[FactorGroup]):
  """Factor table [N, K] -> (class ids [N, G] int32, classes per group).

  An ordinal group's ids are its integer levels (0 .. L-1, L from the data's maximum);
  any other group's ids index its distinct label rows.
  """
  factors = np.asarray(factors).reshape(len(factors), -1)
  ids, sizes = [], []
  for g in groups:
    cols = factors[:, list(g.columns)]
    if g.ordinal:
      if cols.shape[1] != 1 or cols.min() < 0:
        raise ValueError(f'ordinal factor group {g.name!r} needs one column of levels >= 0')
      ids.append(cols[:, 0].astype(np.int32))
      sizes.append(int(max(cols.max() + 1, g.levels or 0)))
    else:
      _, inv = np.unique(cols, axis=0, return_inverse=True)
      ids.append(inv.reshape(-1).astype(np.int32))
      sizes.append(int(inv.max() + 1))
  return np.stack(ids, 1), tuple(sizes)


def default_groups(factors: np.ndarray, names: Sequence[str] | None = None,
                   ordinal: bool = False, max_joint: int = 4096) -> tuple[FactorGroup, ...]:
  """Groups for factors a dataset did not describe: the joint label as one group when it
  has at most `max_joint` values, else one group per column (assumed independent)."""
  factors = np.asarray(factors).reshape(len(factors), -1)
  k = factors.shape[1]
  names = list(names) if names is not None else [f'f{i}' for i in range(k)]
  if not ordinal and len(np.unique(factors, axis=0)) <= max_joint:
    return (FactorGroup('+'.join(names), tuple(range(k))),)
  return tuple(FactorGroup(names[i], (i,), ordinal=ordinal) for i in range(k))


# ----------------------------------------------------------------------------- model


# Multipliers of the predicted width sigma(z) the discretised Gaussian of an ordinal
# group is scored with; the validation split picks one per group, with the mixture
# weight below.
SIGMAS = tuple(float(v) for v in np.geomspace(0.25, 4.0, 17))
MIN_SIGMA = 0.05  # Levels: below this every grid's Gaussian is a point mass anyway.
# Weight of the Gaussian in the mixture with the classifier (0: classifier alone).
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.97, 0.99, 0.999)


def ordinal_level(level, size: int):
  """An ordinal group's level (0 .. size - 1) scaled to [-1, 1], as the chain's later
  groups see it (numpy or jax arrays alike)."""
  return 2 * level / max(size - 1, 1) - 1


def label_features(ids, sizes, ordinal):
  """What a later group's head sees of the earlier groups' labels.

  ids [N, G] -> (features [N, F] float32, masks [G, F]): an ordinal group's level scaled
  to [-1, 1], any other group's one-hot code; mask g selects the groups before g.
  """
  feats, owner = [], []
  for g, (size, o) in enumerate(zip(sizes, ordinal, strict=True)):
    if o:
      feats.append(ordinal_level(ids[:, g:g + 1], size).astype(np.float32))
      owner.append(np.full(1, g))
    else:
      feats.append(np.eye(size, dtype=np.float32)[ids[:, g]])
      owner.append(np.full(size, g))
  owner = np.concatenate(owner)
  masks = (owner[None, :] < np.arange(len(sizes))[:, None]).astype(np.float32)
  return np.concatenate(feats, 1), masks


class _ChainDense(nn.Module):
  """nn.Dense over the chain's per-group input [h_g, z, labels of the groups before g,
  one-hot g] without building that input.

  The label block is one-hot (its product is a row of the kernel) or one ordinal level
  (a multiple of a row), and z's product is shared by every group, so a group costs a
  few row gathers instead of a product over the whole input, which for the content
  factors is mostly one-hot codes hundreds wide. The kernel is the one nn.Dense would
  hold ([H + D + F + G, features], initialised alike), so the function is nn.Dense's on
  the concatenated input (up to the order of float sums).
  """
  features: int
  sizes: tuple[int, ...]
  ordinal: tuple[bool, ...]
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, z, ids, h=None, group=None):
    """z [B, D], ids [B, G] int, h [B, H] (group `group`'s trunk output) or None.

    Returns [B, G, features] (every group; h None) or [B, features] (group `group`).
    """
    widths = [1 if o else s for s, o in zip(self.sizes, self.ordinal, strict=True)]
    hw = 0 if h is None else h.shape[-1]
    d = z.shape[-1]
    kernel = self.param('kernel', self.kernel_init,
                        (hw + d + sum(widths) + len(self.sizes), self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    start = np.cumsum([hw + d] + widths)  # Row of each label block; the last: group ids.
    groups = range(len(self.sizes)) if group is None else range(group)

    def label_term(g):  # [B, features]: group g's label times its rows of the kernel.
      if self.ordinal[g]:
        level = ordinal_level(ids[:, g].astype(z.dtype), self.sizes[g])
        return level[:, None] * kernel[start[g]]
      return kernel[start[g] + ids[:, g]]

    out = z @ kernel[hw:hw + d] + bias
    terms = [label_term(g) for g in groups]
    if group is None:
      # Group g sees the labels of the groups before it: an exclusive running sum.
      before = [jnp.zeros_like(out)]
      for t in terms[:-1]:
        before.append(before[-1] + t)
      return out[:, None] + jnp.stack(before, 1) + kernel[start[-1]:][None]
    out = out + h @ kernel[:hw] + kernel[start[-1] + group]
    for t in terms:
      out = out + t
    return out


class Probe(nn.Module):
  """(z [B, D], ids [B, G] int, base [B, G]) -> (logits per group (tuple of [B, L_g]),
  level means [B, G], widths [B, G]).

  Group g's input is z with the labels of groups 0..g-1 and the group's one-hot index,
  so the groups form a chain q(f | z) = prod_g q_g(f_g | z, f_<g): a proper distribution
  over the joint factor that also sees what only the factors together hold (a pose code
  that mixes x and y). One trunk, shared by the groups; every layer that reads the input
  is a `_ChainDense`. The means (in levels) are used by ordinal groups only: a regression
  of the level on the input, as the closed-form least-squares fit `base` plus the
  network's correction.
  """
  sizes: tuple[int, ...]
  ordinal: tuple[bool, ...]
  hidden: int = 256
  depth: int = 2

  @nn.compact
  def __call__(self, z, ids, base):
    b, g = ids.shape
    chain = functools.partial(_ChainDense, sizes=self.sizes, ordinal=self.ordinal)
    h = nn.relu(chain(self.hidden, name='Dense_0')(z, ids)).reshape(b * g, self.hidden)
    for i in range(1, self.depth):
      h = nn.relu(nn.Dense(self.hidden, name=f'Dense_{i}')(h))
    h = h.reshape(b, g, self.hidden)
    # Every head also reads the input itself (a linear skip): every linear classifier fits.
    zeros = nn.initializers.zeros
    logits = tuple(chain(size, kernel_init=zeros, name=f'Dense_{self.depth + i}')(
        z, ids, h[:, i], i) for i, size in enumerate(self.sizes))
    # The linear part of the regression is solved exactly beforehand (`base`): Adam's
    # steps jitter a weight by about lr, which at lr 1e-3 already blurs a gradient-trained
    # linear read-out of a 32-level grid by ~0.5 levels. The network adds what is not
    # linear, from outputs of order 1 scaled to the grid.
    first = self.depth + g
    u = jnp.stack([chain(1, kernel_init=zeros, name=f'Dense_{first + i}')(
        z, ids, h[:, i], i)[:, 0] for i in range(g)], 1)
    # Its width (levels), per sample: posteriors are sharper in some places than others.
    v = jnp.stack([chain(1, kernel_init=zeros, bias_init=nn.initializers.constant(np.log(3.0)),
                         name=f'Dense_{first + g + i}')(z, ids, h[:, i], i)[:, 0]
                   for i in range(g)], 1)
    return logits, base + (jnp.asarray(self.sizes, jnp.float32) - 1) * u, \
        MIN_SIGMA + jnp.exp(v)


def _log_softmax_at(logits, ids):
  """[B, G] log q_g(true label | input) of each group's classifier."""
  return jnp.stack([jnp.take_along_axis(jax.nn.log_softmax(lg), ids[:, g:g + 1], 1)[:, 0]
                    for g, lg in enumerate(logits)], 1)


def _log_gauss_at(mu, sigma, ids, sizes, ordinal):
  """[B, G, S] log of the discretised Gaussian N(level; mu, m_s sigma) at the true level,
  normalised over each group's levels, for every multiplier m_s in SIGMAS (0 for a group
  that is not ordinal: it has no Gaussian)."""
  mult = jnp.asarray(SIGMAS, jnp.float32)
  out = []
  for g, size in enumerate(sizes):
    if not ordinal[g]:
      out.append(jnp.zeros((len(mu), len(SIGMAS)), jnp.float32))
      continue
    j = jnp.arange(size, dtype=jnp.float32)
    sig = sigma[:, g, None] * mult  # [B, S]
    e = -0.5 * ((j[None, :, None] - mu[:, g, None, None]) / sig[:, None]) ** 2  # [B, L, S]
    true = -0.5 * ((ids[:, g, None].astype(jnp.float32) - mu[:, g, None]) / sig) ** 2
    out.append(true - jax.nn.logsumexp(e, axis=1))
  return jnp.stack(out, 1)


def _jit(fun):
  """jax.jit at XLA's full optimisation even where XLA_FLAGS lower it (as `make test`
  does to compile networks faster): a probe runs tens to thousands of epochs and as many
  evaluations of the same program, so its run time outweighs the longer compile even on
  a few hundred frames."""
  return jax.jit(fun, compiler_options={'xla_backend_optimization_level': 3})


@functools.lru_cache(maxsize=64)
def _make_fns(sizes: tuple[int, ...], ordinal: tuple[bool, ...], batch_size: int,
              hidden: int, depth: int, learning_rate: float):
  """(init, tx, epoch, evaluate) for one probe shape, built once per process: probes of
  the same shape (every evaluation of runs of one config, the seeds of a study, the
  tests) then reuse one traced and compiled program instead of building it again. The
  learning rate lives in the optimiser state (`inject_hyperparams`), so the drops of
  `train_probe` never touch what is cached. `init` is compiled too: run eagerly, the
  chain's hundreds of small ops each cost a dispatch (the same bits either way)."""
  model = Probe(sizes, ordinal, hidden, depth)
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
  ordinal_mask = jnp.asarray(ordinal, jnp.float32)
  scale = jnp.asarray([max(s - 1, 1) for s in sizes], jnp.float32)

  def loss_fn(params, z, base, ids):
    logits, mu, sigma = model.apply(params, z, ids, base)
    ce = -jnp.mean(_log_softmax_at(logits, ids), axis=0)
    # Ordinal groups only: the squared error in units of the grid's span, and the
    # Gaussian likelihood of the width given that (fixed) mean: a variance regression.
    mse = jnp.mean(((mu - ids) / scale) ** 2, axis=0)
    r = jax.lax.stop_gradient(mu) - ids
    nll = jnp.mean(jnp.log(sigma) + 0.5 * (r / sigma) ** 2, axis=0)
    return jnp.sum(ce) + jnp.sum((mse + nll) * ordinal_mask)

  def train_step(carry, batch):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  @_jit
  def epoch(params, opt_state, arrays, key):
    n = (len(arrays[0]) // batch_size) * batch_size
    perm = jax.random.permutation(key, len(arrays[0]))[:n]
    batches = tuple(a[perm].reshape((-1, batch_size) + a.shape[1:]) for a in arrays)
    (params, opt_state), _ = jax.lax.scan(train_step, (params, opt_state), batches)
    return params, opt_state

  @_jit
  def evaluate(params, z, base, ids):
    """Per sample, log q_g(true label) of every (sigma, lambda) mixture [N, G, S, L].

    An ordinal group's q is lam N(level; mu, m_s sigma) + (1 - lam) softmax; any other
    group's is its softmax alone (every entry the same).
    """
    logits, mu, sigma = model.apply(params, z, ids, base)
    cls = _log_softmax_at(logits, ids)[:, :, None, None]  # [N, G, 1, 1]
    lam = jnp.asarray(LAMBDAS, jnp.float32)
    mix = jnp.logaddexp(jnp.log(lam) + _log_gauss_at(mu, sigma, ids, sizes, ordinal)[..., None],
                        jnp.log1p(-lam) + cls)
    return jnp.where(ordinal_mask[:, None, None] > 0, mix, jnp.broadcast_to(cls, mix.shape))

  return jax.jit(model.init), tx, epoch, evaluate


def _mixture_ce(evaluate, params, arrays, rows, chunk: int):
  """Held-out CE (nats) of every (sigma, lambda) mixture per group, [G, S, L], over
  `rows`: `evaluate` in chunks of one size (the last padded: one compiled shape), the
  mean in float64."""
  pad = np.resize(rows, -(-len(rows) // chunk) * chunk)
  total = 0.0
  for s in range(0, len(pad), chunk):
    part = np.asarray(evaluate(params, *(a[pad[s:s + chunk]] for a in arrays)), np.float64)
    total = total - part[:len(rows) - s].sum(0)  # The last chunk's padding left out.
  return total / len(rows)


def split_indices(n: int, config: ProbeConfig):
  """Seeded (train, val, test) index arrays covering range(n)."""
  perm = np.random.default_rng(np.random.SeedSequence([config.seed, n])).permutation(n)
  n_tr = int(round(n * config.train_fraction))
  n_va = int(round(n * config.val_fraction))
  if min(n_tr, n_va, n - n_tr - n_va) < 1:
    raise ValueError(f'{n} samples are too few for a train/validation/test split')
  return perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]


def train_probe(z, ids, sizes, ordinal, config: ProbeConfig = DEFAULT) -> dict:
  """Fits the probe on the train split; returns per-group held-out CE and diagnostics.

  z [N, D] float, ids [N, G] int (from `encode_groups`). Returns dict with 'ce_test' [G],
  'ce_val' [G], 'best_epoch' [G], 'sigma' [G] and 'lam' [G] (the Gaussian's width and
  weight chosen on validation; lam 0 for the classifier alone), 'epochs', 'seconds'.
  """
  t0 = time.perf_counter()
  z = np.asarray(z, np.float64).reshape(len(z), -1)
  tr, va, te = split_indices(len(z), config)
  mean, std = z[tr].mean(0), z[tr].std(0)
  z = ((z - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
  ids = np.asarray(ids, np.int32)
  ordinal = np.asarray(ordinal, bool)
  if ordinal.any():
    # The least-squares read-out of the ordinal levels, as extra input coordinates: an
    # MLP finds a non-linear calibration of a few such directions easily, but not
    # inside 128 noisy ones at 10^4 frames (it overfits first), so without them the
    # probe could hold less about f_p for z_c than for its own 2-d projection.
    x1 = np.hstack([z, np.ones((len(z), 1), np.float32)]).astype(np.float64)
    w, *_ = np.linalg.lstsq(x1[tr], ids[tr][:, ordinal].astype(np.float64), rcond=None)
    proj = x1 @ w
    sd = proj[tr].std(0)
    proj = (proj - proj[tr].mean(0)) / np.where(sd > 0, sd, 1.0)
    z = np.hstack([z, proj.astype(np.float32)])
  batch = min(config.batch_size, len(tr))
  key = jax.random.key(config.seed)
  e, masks = label_features(ids, sizes, ordinal)
  init, tx, epoch, evaluate = _make_fns(
      tuple(int(s) for s in sizes), tuple(bool(o) for o in ordinal), batch, config.hidden,
      config.depth, config.learning_rate)
  # Least squares of each ordinal group's level on [z, earlier labels, 1] (train split).
  base = np.zeros(ids.shape, np.float32)
  for i in np.flatnonzero(ordinal):
    x1 = np.hstack([z, e * masks[i], np.ones((len(z), 1), np.float32)]).astype(np.float64)
    w, *_ = np.linalg.lstsq(x1[tr], ids[tr, i].astype(np.float64), rcond=None)
    base[:, i] = x1 @ w
  params = init(key, z[:1], ids[:1], base[:1])
  opt_state = tx.init(params)
  arrays = (z, base, ids)
  train_arrays = tuple(jnp.asarray(a[tr]) for a in arrays)
  chunk = min(10_000, len(va))  # One evaluation shape for the validation and test rows.
  g = ids.shape[1]
  best_val = np.full(g, np.inf)
  best_epoch = np.zeros(g, np.int64)
  best_s, best_l = np.zeros(g, np.int64), np.zeros(g, np.int64)
  kept = {}  # Epoch -> its parameters, while some group's best validation CE is there.
  since, drops, run = 0, 0, 0
  for ep in range(1, config.max_epochs + 1):
    params, opt_state = epoch(params, opt_state, train_arrays, jax.random.fold_in(key, ep))
    run = ep
    val = _mixture_ce(evaluate, params, arrays, va, chunk)  # [G, S, L]
    flat = val.reshape(g, -1).argmin(1)
    val_best = val.reshape(g, -1)[np.arange(g), flat]
    improved = val_best < best_val - 1e-4
    if np.any(improved):
      s_i, l_i = np.unravel_index(flat, val.shape[1:])
      best_s, best_l = np.where(improved, s_i, best_s), np.where(improved, l_i, best_l)
      best_epoch = np.where(improved, ep, best_epoch)
      best_val = np.where(improved, val_best, best_val)
      kept = {k: p for k, p in kept.items() if k in best_epoch} | {ep: params}
      since = 0
    else:
      since += 1
    if since >= config.patience:
      # A plateau: finer steps (a sharp posterior needs them), or stop.
      if drops == config.lr_drops:
        break
      drops, since = drops + 1, 0
      opt_state.hyperparams['learning_rate'] = opt_state.hyperparams['learning_rate'] / 4
  # Each group's bound: its test CE at the epoch, width and weight its validation CE chose.
  # The test rows are scored only here, once per kept epoch: selection never saw them.
  best_test = np.full(g, np.nan)
  for kept_epoch, kept_params in kept.items():
    test = _mixture_ce(evaluate, kept_params, arrays, te, chunk)
    mine = best_epoch == kept_epoch
    best_test[mine] = test[np.arange(g), best_s, best_l][mine]
  best_lam = np.where(ordinal, np.asarray(LAMBDAS)[best_l], 0.0)
  best_sigma = np.asarray(SIGMAS)[best_s]
  return {'ce_test': best_test, 'ce_val': best_val, 'best_epoch': best_epoch,
          'sigma': np.where(ordinal, best_sigma, np.nan), 'lam': best_lam, 'epochs': run,
          'n_train': len(tr), 'n_val': len(va), 'n_test': len(te),
          'seconds': time.perf_counter() - t0}


def mi_lower_bound(z, factors, groups: Sequence[FactorGroup],
                   config: ProbeConfig = DEFAULT) -> dict:
  """Held-out lower bound on I(f; z) in nats for the factor groups of `factors`.

  z [N, D] latents, factors [N, K] int. Returns dict: 'mi' (sum over groups), 'groups'
  {name: {'H', 'H_source', 'ce', 'mi', 'best_epoch'}} (a group's 'mi' bounds
  I(f_g; z | f_<g), its link of the chain, in the order of `groups`), 'H' (sum of group
  entropies), 'epochs', 'seconds'.
  """
  ids, sizes = encode_groups(factors, groups)
  res = train_probe(z, ids, sizes, [g.ordinal for g in groups], config)
  out, total_h, total = {}, 0.0, 0.0
  for i, g in enumerate(groups):
    h, src = (g.entropy, 'population') if g.entropy is not None else (
        knn.entropy_grassberger(ids[:, i]), 'grassberger')
    mi = h - float(res['ce_test'][i])
    out[g.name] = {'H': h, 'H_source': src, 'ce': float(res['ce_test'][i]), 'mi': mi,
                   'best_epoch': int(res['best_epoch'][i])}
    if g.ordinal:
      out[g.name].update(sigma=float(res['sigma'][i]), gauss_weight=float(res['lam'][i]))
    total_h += h
    total += mi
  return {'mi': total, 'H': total_h, 'groups': out, 'epochs': res['epochs'],
          'n_test': res['n_test'], 'seconds': res['seconds']}


# ----------------------------------------------------------------------------- linear R^2


def linear_r2(z, targets, seed: int = 0, test_fraction: float = 0.3) -> float:
  """Held-out R^2 of a least-squares linear map z [N, D] -> targets [N, M].

  R^2 = 1 - SSE / SST summed over the target columns (a multi-output R^2: the fraction
  of the targets' variance a linear read-out of z explains on frames it was not fitted
  on). Constant target columns are dropped.
  """
  z = np.asarray(z, np.float64).reshape(len(z), -1)
  t = np.asarray(targets, np.float64).reshape(len(z), -1)
  t = t[:, t.std(0) > 0]
  perm = np.random.default_rng(np.random.SeedSequence([seed, len(z)])).permutation(len(z))
  n_te = max(1, int(round(len(z) * test_fraction)))
  te, tr = perm[:n_te], perm[n_te:]
  x = np.hstack([z, np.ones((len(z), 1))])
  w, *_ = np.linalg.lstsq(x[tr], t[tr], rcond=None)
  sse = np.sum((x[te] @ w - t[te]) ** 2)
  sst = np.sum((t[te] - t[tr].mean(0)) ** 2)
  return float(1 - sse / sst)


def one_hot_groups(factors, groups: Sequence[FactorGroup]) -> np.ndarray:
  """Factor table [N, K] -> [N, sum L_g]: one-hot of each group's label (for R^2)."""
  ids, sizes = encode_groups(factors, groups)
  return np.hstack([np.eye(s, dtype=np.float32)[ids[:, i]] for i, s in enumerate(sizes)])
