"""The device-side preprocessing against the paper's definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import preprocess


def test_pca_constants_are_the_0_1_ones_rescaled_to_0_255():
  np.testing.assert_allclose(preprocess.PCA_EIGVAL, [55.4625, 4.794, 1.1475], rtol=1e-5)
  # Columns are orthonormal eigenvectors (to the 4 digits they are given with).
  vec = preprocess.PCA_EIGVEC
  np.testing.assert_allclose(vec.T @ vec, np.eye(3), atol=2e-4)
  np.testing.assert_allclose(vec[:, 0], [-0.5675, -0.5808, -0.5836])


def test_mean_subtraction_channel_and_pixel():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(2, 5, 5, 3), dtype=np.uint8)
  out = preprocess.normalize(images, mean=preprocess.CHANNEL_MEAN)
  assert out.dtype == jnp.float32 and out.shape == images.shape
  np.testing.assert_array_equal(out, images.astype(np.float32) - np.float32([127.30, 119.72, 104.91]))
  mean_image = rng.uniform(0, 255, size=(5, 5, 3)).astype(np.float32)
  out = preprocess.normalize(images, mean=mean_image)
  np.testing.assert_allclose(out, images.astype(np.float32) - mean_image, rtol=1e-6)


def test_pca_noise_statistics_match_the_eigen_decomposition():
  n, std = 40_000, 0.1
  images = np.zeros((n, 1, 1, 3), np.uint8)
  shift = np.asarray(preprocess.normalize(images, mean=np.zeros(3), pca_std=std,
                                          rng=jax.random.key(1)))[:, 0, 0]
  vec, val = preprocess.PCA_EIGVEC.astype(np.float64), preprocess.PCA_EIGVAL.astype(np.float64)
  expected_cov = vec @ np.diag((std * val) ** 2) @ vec.T
  # Mean 0 within 4 standard errors per channel.
  standard_error = np.sqrt(np.diag(expected_cov) / n)
  assert np.all(np.abs(shift.mean(axis=0)) < 4 * standard_error)
  np.testing.assert_allclose(np.cov(shift.T), expected_cov, atol=0.03 * expected_cov[0, 0])
  # In the eigenbasis the three alphas are independent with std 0.1 * lambda_i.
  alphas_times_lambda = shift @ vec
  np.testing.assert_allclose(alphas_times_lambda.std(axis=0), std * val, rtol=0.02)
  corr = np.corrcoef(alphas_times_lambda.T)
  np.testing.assert_allclose(corr, np.eye(3), atol=0.03)
  # About 5.6 grey levels of colour (root of the total variance): not ~1500.
  assert 5.0 < np.sqrt(np.trace(np.cov(shift.T))) < 6.0


def test_one_colour_shift_per_image_for_every_pixel_and_crop():
  images = np.full((4, 2, 3, 3, 3), 100, np.uint8)  # (batch, crops, H, W, 3)
  out = np.asarray(preprocess.normalize(images, mean=np.zeros(3), pca_std=0.1,
                                        rng=jax.random.key(0)))
  shift = out - 100.0
  # Same shift at every pixel of one image, different shifts across images and crops.
  np.testing.assert_allclose(shift, shift[:, :, :1, :1, :] * np.ones_like(shift), atol=1e-4)
  per_image = shift[:, :, 0, 0, :].reshape(-1, 3)
  assert len({tuple(np.round(s, 3)) for s in per_image}) == 8
  assert np.abs(per_image).max() > 0.1


def test_normalize_inside_jit_is_deterministic_per_key():
  images = jnp.full((3, 4, 4, 3), 7, jnp.uint8)
  step = jax.jit(lambda x, key: preprocess.normalize(
      x, mean=preprocess.CHANNEL_MEAN, pca_std=0.1, rng=key))
  a = step(images, jax.random.key(3))
  b = step(images, jax.random.key(3))
  c = step(images, jax.random.key(4))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_pca_needs_a_key():
  with pytest.raises(ValueError, match='rng'):
    preprocess.normalize(np.zeros((1, 2, 2, 3), np.uint8), mean=np.zeros(3), pca_std=0.1)


def test_standardize_divides_by_the_channel_std_after_the_mean():
  images = np.full((2, 4, 4, 3), 200, np.uint8)
  normalizer = preprocess.Normalizer(preprocess.CHANNEL_MEAN, preprocess.CHANNEL_STD)
  out = np.asarray(normalizer(images))
  np.testing.assert_allclose(out[0, 0, 0], (200 - preprocess.CHANNEL_MEAN) / preprocess.CHANNEL_STD,
                             rtol=1e-6)
  paper = np.asarray(preprocess.Normalizer(preprocess.CHANNEL_MEAN)(images))
  np.testing.assert_allclose(paper[0, 0, 0], 200 - preprocess.CHANNEL_MEAN, rtol=1e-6)


def test_caffes_input_is_bgr_on_0_255_less_caffes_mean_pixel():
  rgb = np.zeros((2, 3, 1, 4, 5, 3), np.uint8)  # (batch, crops, ..., H, W, RGB)
  rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 7, 0  # red
  caffe = preprocess.Normalizer(preprocess.CAFFE_MEAN_RGB, bgr=True)
  out = np.asarray(jax.jit(caffe)(rgb))
  assert out.dtype == np.float32 and out.shape == rgb.shape
  # Blue first: 0 - 104.007, green 7 - 116.669, red 255 - 122.679.
  np.testing.assert_allclose(out[0, 0, 0, 0, 0], [-104.00698793, 7 - 116.66876762,
                                                  255 - 122.67891434], rtol=1e-6)
  np.testing.assert_array_equal(out, np.broadcast_to(out[0, 0, 0, 0, 0], out.shape))
