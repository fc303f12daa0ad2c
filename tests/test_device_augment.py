"""The on-device crops, flips, colour noise and mean against their definitions (no TF here).

The comparisons with the host's crops of real stored squares are in test_square_store.py.
"""

import functools

import jax
import numpy as np
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import device_augment
from alexnet_jax import parallel
from alexnet_jax import preprocess
from tests import meshes

S = 24
R = config_lib.resize_size(S)  # 27


def _squares(count, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(count, R, R, 3), dtype=np.uint8)


def _mean_image(seed=1):
  return np.random.default_rng(seed).uniform(0, 255, size=(R, R, 3)).astype(np.float32)


@functools.cache
def _train_views(mesh_shape=None, pca_std=0.0, mean='zero', std=False):
  """jit(squares, rng) -> training views, on a mesh's data axis if given; cached."""
  augmenter = device_augment.SquareAugmenter(
      _mean_image() if mean == 'pixel' else np.zeros(3, np.float32),
      preprocess.CHANNEL_STD if std else None, S)
  views = lambda squares, rng: augmenter(squares, pca_std=pca_std, rng=rng)
  if mesh_shape is None:
    return jax.jit(views)
  mesh = meshes.mesh(*mesh_shape)
  data = parallel.batch_sharding(mesh)
  return jax.jit(views, in_shardings=(data, None), out_shardings=data)


def _window(square, offset, flip):
  y, x = offset
  window = square[y:y + S, x:x + S]
  return window[:, ::-1] if flip else window


def test_random_crops_are_exact_windows_at_every_offset_flipped_half_the_time():
  squares, rng = _squares(64), jax.random.key(5)
  views = np.asarray(_train_views()(squares, rng))
  offsets, flips = jax.device_get(device_augment.random_windows(
      device_augment.example_keys(rng, 64), R, S))
  for square, view, offset, flip in zip(squares, views, offsets, flips):
    np.testing.assert_array_equal(view, _window(square, offset, flip))  # uint8 values, exact
  # Over many examples: every one of the (R - S + 1)^2 offsets, and mirrors half the time.
  offsets, flips = jax.device_get(device_augment.random_windows(
      device_augment.example_keys(jax.random.key(6), 4000), R, S))
  assert {tuple(o) for o in offsets} == {(y, x) for y in range(R - S + 1) for x in range(R - S + 1)}
  assert offsets.min() == 0 and offsets.max() == R - S
  assert abs(flips.mean() - 0.5) < 4 * np.sqrt(0.25 / 4000)  # within 4 standard errors


def test_an_example_draws_from_its_index_whatever_the_batch():
  squares, rng = _squares(8), jax.random.key(2)
  views = _train_views(pca_std=0.1)
  np.testing.assert_array_equal(views(squares[:4], rng), views(squares, rng)[:4])
  other_step = views(squares, jax.random.key(3))
  assert not np.array_equal(other_step, views(squares, rng))


def test_the_mean_image_is_subtracted_from_the_square_before_the_crop():
  squares, rng = _squares(16), jax.random.key(7)
  views = np.asarray(_train_views(mean='pixel', std=True)(squares, rng))
  offsets, flips = jax.device_get(device_augment.random_windows(
      device_augment.example_keys(rng, 16), R, S))
  minus_mean = squares.astype(np.float32) - _mean_image()
  for square, view, offset, flip in zip(minus_mean, views, offsets, flips):
    np.testing.assert_allclose(view, _window(square, offset, flip) / preprocess.CHANNEL_STD,
                               rtol=1e-6)
  # Evaluation: the centre window of (square - mean image), and the ten of augment.py.
  augmenter = device_augment.SquareAugmenter(_mean_image(), None, S, eval_crops=10)
  crops = np.asarray(jax.jit(augmenter.eval_inputs)(squares))
  far, mid = R - S, (R - S) // 2
  for square, ten in zip(minus_mean, crops):
    views = [square[:S, :S], square[:S, far:], square[far:, :S], square[far:, far:],
             square[mid:mid + S, mid:mid + S]]
    np.testing.assert_array_equal(ten, np.stack(views + [v[:, ::-1] for v in views]))
  centre = device_augment.SquareAugmenter(_mean_image(), None, S, augment='none')
  np.testing.assert_array_equal(np.asarray(jax.jit(centre)(squares))[3],
                                minus_mean[3, mid:mid + S, mid:mid + S])


def test_one_colour_shift_per_image_as_the_paper_defines_it():
  squares = np.full((6, R, R, 3), 100, np.uint8)
  rng = jax.random.key(0)
  shift = np.asarray(_train_views(pca_std=0.1)(squares, rng)) - 100.0
  np.testing.assert_allclose(shift, shift[:, :1, :1, :] * np.ones_like(shift), atol=1e-4)
  per_image = shift[:, 0, 0, :]
  assert len({tuple(np.round(s, 3)) for s in per_image}) == 6
  # sum_i p_i alpha_i lambda_i with each example's own alphas, as preprocess.py writes it.
  for key, image_shift in zip(device_augment.example_keys(rng, 6), per_image):
    alpha_key = jax.random.fold_in(key, device_augment._COLOUR)  # pylint: disable=protected-access
    expected = preprocess.pca_color_shift(alpha_key, (), 0.1)
    np.testing.assert_allclose(image_shift, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('pca_std', [0.0, 0.1])
def test_the_same_batch_is_augmented_the_same_on_every_mesh(pca_std):
  squares, rng = _squares(8, seed=3), jax.random.key(11)
  single = np.asarray(_train_views((1, 1), pca_std, 'pixel')(squares, rng))
  split = np.asarray(_train_views((2, 2), pca_std, 'pixel')(squares, rng))
  np.testing.assert_array_equal(single, split)


def test_random_crops_need_the_steps_key():
  augmenter = device_augment.SquareAugmenter(np.zeros(3), None, S)
  with pytest.raises(ValueError, match='rng'):
    augmenter(_squares(1))
  centre = device_augment.SquareAugmenter(np.zeros(3), None, S, augment='none')
  assert centre(_squares(1)).shape == (1, S, S, 3)
