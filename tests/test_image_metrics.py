"""SSIM / PSNR under the stated protocol, checked against scikit-image."""

import dm_pix
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mipae_jax.metrics import image


def _frames(shape, seed=0, noise=0.1):
  rng = np.random.default_rng(seed)
  # Smooth-ish frames: blocky structure plus noise, so SSIM is far from 0 and 1.
  base = np.kron(rng.random(shape[:-3] + (8, 8, shape[-1])), np.ones((8, 8, 1)))
  a = np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1)
  b = np.clip(a + noise * rng.standard_normal(a.shape), 0, 1)
  return a.astype(np.float32), b.astype(np.float32)


def _sk_ssim(a, b):
  return structural_similarity(
      a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False, data_range=1.0, channel_axis=-1)


@pytest.mark.parametrize('channels', [1, 3])
def test_ssim_matches_skimage(channels):
  a, b = _frames((4, 64, 64, channels), seed=channels)
  ours = np.asarray(image.frame_ssim(a, b))
  ref = np.array([_sk_ssim(x, y) for x, y in zip(a, b, strict=True)])
  assert ours.shape == (4,)
  assert 0.2 < ref.min() and ref.max() < 0.99
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_ssim_border_convention_is_the_valid_region():
  # Changing only the outer 5-pixel ring of one frame must move our SSIM exactly as
  # skimage's (both average over the interior whose 11x11 windows stay in-image).
  a, b = _frames((64, 64, 1), seed=3)
  b2 = b.copy()
  b2[:3] = 1 - b2[:3]
  for y in (b, b2):
    np.testing.assert_allclose(float(image.frame_ssim(a, y)), _sk_ssim(a, y), atol=1e-5)


def test_psnr_matches_skimage_and_dm_pix():
  a, b = _frames((3, 64, 64, 3), seed=5)
  ours = np.asarray(image.frame_psnr(a, b))
  ref = np.array([peak_signal_noise_ratio(x.astype(np.float64), y.astype(np.float64),
                                          data_range=1.0) for x, y in zip(a, b, strict=True)])
  np.testing.assert_allclose(ours, ref, atol=1e-4)  # dB; float32 MSE
  np.testing.assert_allclose(ours, np.asarray(dm_pix.psnr(a, b)), atol=1e-4)


def test_psnr_identical_frames_is_capped():
  a, _ = _frames((2, 32, 32, 1))
  np.testing.assert_allclose(np.asarray(image.frame_psnr(a, a)), image.PSNR_CAP_DB)
  assert np.asarray(image.frame_ssim(a, a)) == pytest.approx(1.0, abs=1e-6)


def test_per_step_metrics_shapes_and_ci():
  a, b = _frames((5, 3, 32, 32, 1), seed=7)
  # Later steps noisier, so the curves must decrease.
  b = np.clip(a + np.linspace(0.02, 0.3, 3)[None, :, None, None, None]
              * np.random.default_rng(0).standard_normal(a.shape), 0, 1).astype(np.float32)
  res = image.per_step_metrics(b, a, batch_size=2)  # 5 videos: a padded last batch
  for key in ('ssim_mean', 'ssim_ci95', 'psnr_mean', 'psnr_ci95'):
    assert res[key].shape == (3,)
  assert res['ssim'].shape == (5, 3) and res['n_videos'] == 5
  assert res['protocol'] == image.SSIM_PROTOCOL and '11x11' in res['protocol']
  assert np.all(np.diff(res['ssim_mean']) < 0) and np.all(np.diff(res['psnr_mean']) < 0)
  np.testing.assert_allclose(res['ssim_ci95'],
                             1.96 * res['ssim'].std(0, ddof=1) / np.sqrt(5), rtol=1e-6)
  direct = np.asarray(image.frame_ssim(b, a))
  np.testing.assert_allclose(res['ssim'], direct, atol=1e-6)
  assert np.all(res['ssim_ci95'] > 0)


def test_per_step_metrics_fewer_videos_than_a_batch():
  a, b = _frames((3, 2, 16, 16, 1), seed=3)
  res = image.per_step_metrics(b, a, batch_size=32)
  assert res['ssim'].shape == (3, 2) and np.all(np.isfinite(res['ssim_mean']))
  np.testing.assert_allclose(res['ssim'], np.asarray(image.frame_ssim(b, a)), atol=1e-6)
