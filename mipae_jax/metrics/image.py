"""Frame-prediction quality: SSIM and PSNR per future step, under one stated protocol.

SSIM numbers are only comparable under one protocol (docs/method.md section 5), so it is a
constant that travels with every result. dm-pix computes the local statistics with a 'valid'
Gaussian convolution, so the SSIM map covers the (H - 10) x (W - 10) interior and is
averaged there (and over channels). scikit-image's `structural_similarity` with
`gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1` filters the
whole image with reflected borders and then crops (win_size - 1) / 2 = 5 pixels from each
side before averaging; interior pixels see no padding, so the two agree (tests/ check
1e-5) without any border convention to reconcile.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

SSIM_PROTOCOL = ('SSIM: Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, float frames in '
                 '[0, 1], max_val 1, mean over the valid (H-10)x(W-10) region and channels '
                 '(dm-pix; equals skimage gaussian_weights=True, use_sample_covariance=False). '
                 'PSNR: 10 log10(1 / MSE) in dB, MSE floored at 1e-10 (identical frames '
                 'give 100 dB, not inf). CI: 1.96 * std / sqrt(N) over videos.')
# 10 log10(1 / 1e-10): identical frames would otherwise average in as +inf.
PSNR_MSE_FLOOR = 1e-10
PSNR_CAP_DB = 100.0


def frame_ssim(a, b) -> jax.Array:
  """SSIM between frames a, b [..., H, W, C] in [0, 1] -> [...] (SSIM_PROTOCOL)."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  lead = a.shape[:-3]
  # dm-pix takes one image or a flat batch.
  s = dm_pix.ssim(a.reshape((-1,) + a.shape[-3:]), b.reshape((-1,) + b.shape[-3:]),
                  max_val=1.0, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03)
  return s.reshape(lead)


def frame_psnr(a, b) -> jax.Array:
  """PSNR in dB between frames a, b [..., H, W, C] in [0, 1] -> [...], capped at 100 dB."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  mse = jnp.mean((a - b) ** 2, axis=(-3, -2, -1))
  return -10.0 * jnp.log10(jnp.maximum(mse, PSNR_MSE_FLOOR))


@jax.jit
def _video_metrics(pred, true):
  # [B, T, H, W, C] x2 -> ssim [B, T], psnr [B, T]
  return frame_ssim(pred, true), frame_psnr(pred, true)


def per_step_metrics(pred, true, batch_size: int = 32) -> dict:
  """SSIM and PSNR at every step, mean and 95% interval over videos.

  Args:
    pred, true: videos [N, T, H, W, C], floats in [0, 1].
    batch_size: videos per jitted call (bounds memory; the last batch is padded so the
      function compiles once).

  Returns:
    dict: ssim_mean [T], ssim_ci95 [T], psnr_mean [T], psnr_ci95 [T] (numpy float64),
    ssim [N, T], psnr [N, T] (per video), n_videos, protocol (SSIM_PROTOCOL).
  """
  pred, true = np.asarray(pred, np.float32), np.asarray(true, np.float32)
  if pred.shape != true.shape or pred.ndim != 5:
    raise ValueError(f'need equal [N, T, H, W, C] shapes, got {pred.shape}, {true.shape}')
  n = len(pred)
  ssim, psnr = [], []
  for start in range(0, n, batch_size):
    p, t = pred[start:start + batch_size], true[start:start + batch_size]
    valid = len(p)
    pad = batch_size - valid
    if pad and n > batch_size:
      p = np.concatenate([p, np.zeros((pad,) + p.shape[1:], p.dtype)])
      t = np.concatenate([t, np.zeros((pad,) + t.shape[1:], t.dtype)])
    s, q = _video_metrics(p, t)
    ssim.append(np.asarray(s)[:valid])
    psnr.append(np.asarray(q)[:valid])
  ssim = np.concatenate(ssim).astype(np.float64)
  psnr = np.concatenate(psnr).astype(np.float64)

  def ci95(v):
    return 1.96 * v.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(v.shape[1])

  return {'ssim_mean': ssim.mean(0), 'ssim_ci95': ci95(ssim),
          'psnr_mean': psnr.mean(0), 'psnr_ci95': ci95(psnr),
          'ssim': ssim, 'psnr': psnr, 'n_videos': n, 'protocol': SSIM_PROTOCOL}
