"""The paper's crops, flips, colour noise and mean subtraction, on the device (no TensorFlow).

The host hands over the stored uint8 R x R squares (square_store.py), (B, R, R, 3); these
pure functions, called inside the jitted train and eval steps, make the model's float32
input from them, as the paper did: subtract the mean (the R x R mean image, or the
per-channel mean) from the square, then take the S x S crop and its mirror image.

  training 'paper': the S x S window at a random offset (any of (R-S+1)^2), mirrored
                    with probability 1/2, plus the PCA colour noise (preprocess.py).
  training 'none':  the centre window, not mirrored (the colour noise as pca_std says).
  evaluation:       the centre window, or the paper's 10 crops in augment.eval_crops's
                    order (corners and centre, then the same five mirrored).

Randomness: example i of a step's global batch draws from fold_in(rng, i), with rng the
step's key (train.py makes it from (seed, step)): whatever the mesh and the batch's
sharding, the same batch is augmented the same way, and a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import preprocess

# fold_in tags of each example's draws.
_CROP, _FLIP, _COLOUR = 0, 1, 2


def example_keys(rng: jax.Array, count: int) -> jax.Array:
  """(count,) keys: example i of the batch draws from fold_in(rng, i)."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(count))


def random_windows(keys: jax.Array, square_size: int,
                   image_size: int) -> tuple[jax.Array, jax.Array]:
  """Per key: (offset (y, x), each in 0..R-S; mirror or not): int32 (B, 2), bool (B,)."""
  def draw(key):
    offset = jax.random.randint(jax.random.fold_in(key, _CROP), (2,), 0,
                                square_size - image_size + 1, jnp.int32)
    return offset, jax.random.bernoulli(jax.random.fold_in(key, _FLIP))
  return jax.vmap(draw)(keys)


def colour_shifts(keys: jax.Array, std: float) -> jax.Array:
  """Per key, the paper's PCA colour shift sum_i p_i alpha_i lambda_i (preprocess.py): (B, 3).

  A sum over i, not a matrix product: the same bits for an example whatever the batch
  size and sharding. And a reduction, which XLA leaves unfused: as elementwise code, the
  normal draws were fused into the per-pixel loops and redone at every pixel (25x the
  augmentation's time on the CPU).
  """
  alpha = std * jax.vmap(lambda key: jax.random.normal(
      jax.random.fold_in(key, _COLOUR), (3,), jnp.float32))(keys)
  weights = alpha * preprocess.PCA_EIGVAL  # (B, i)
  return jnp.sum(weights[:, None, :] * preprocess.PCA_EIGVEC[None], axis=-1)  # (B, RGB)


def crop(images: jax.Array, offsets: jax.Array, image_size: int) -> jax.Array:
  """(B, R, R, C) -> (B, S, S, C): each image's window at its (y, x) offset."""
  size = (image_size, image_size, images.shape[-1])
  return jax.vmap(lambda image, at: jax.lax.dynamic_slice(image, (at[0], at[1], 0), size))(
      images, offsets)


def mirror(images: jax.Array, flips: jax.Array) -> jax.Array:
  """Mirrors left-right the images (B, H, W, C) whose flip is True."""
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def eval_windows(square_size: int, image_size: int, crops: int) -> list[tuple[int, int]]:
  """(y, x) of the eval crops before mirroring: the centre, or the 4 corners and the centre."""
  far, mid = square_size - image_size, (square_size - image_size) // 2
  return [(mid, mid)] if crops == 1 else [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]


def eval_crops(images: jax.Array, image_size: int, crops: int) -> jax.Array:
  """(B, R, R, C) -> (B, crops, S, S, C): the centre (1) or the paper's ten (10)."""
  views = [images[:, y:y + image_size, x:x + image_size]
           for y, x in eval_windows(images.shape[1], image_size, crops)]
  if crops == 10:
    views += [view[:, :, ::-1] for view in views]
  return jnp.stack(views, axis=1)


def centre_crop(images, image_size: int):
  """(..., R, R, C) numpy or JAX -> (..., S, S, C): the centre window."""
  start = (images.shape[-2] - image_size) // 2
  return images[..., start:start + image_size, start:start + image_size, :]


@dataclasses.dataclass(frozen=True, eq=False)
class SquareAugmenter:
  """Model input from uint8 squares (B, R, R, 3): what the train and eval steps call.

  Called like preprocess.Normalizer (which takes crops the host made): images, pca_std
  and the step's rng give the training views; eval_inputs gives the evaluation crops.
  """
  mean: np.ndarray                  # (3,) per-channel, or (R, R, 3) mean image; 0..255
  std: np.ndarray | None            # (3,) to divide by after the mean, or None (paper)
  image_size: int                   # S
  augment: str = 'paper'            # 'paper' (random window, mirror) or 'none' (centre)
  eval_crops: int = 1
  bgr: bool = False                 # Caffe's input convention: channels reversed at the end

  def _minus_mean(self, squares: jax.Array) -> jax.Array:
    return squares.astype(jnp.float32) - jnp.asarray(self.mean, jnp.float32)

  def _scaled(self, x: jax.Array) -> jax.Array:
    x = x if self.std is None else x / jnp.asarray(self.std, jnp.float32)
    return x[..., ::-1] if self.bgr else x

  def __call__(self, squares: jax.Array, *, pca_std: float = 0.0,
               rng: jax.Array | None = None) -> jax.Array:
    """float32 (B, S, S, 3): the window of (square - mean), mirrored, plus colour noise."""
    if rng is None and (pca_std > 0 or self.augment == 'paper'):
      raise ValueError('SquareAugmenter needs the step\'s rng for random crops or colour noise.')
    keys = None if rng is None else example_keys(rng, squares.shape[0])
    x = self._minus_mean(squares)  # fused by XLA into the crop: only the window is computed
    if self.augment == 'paper':
      offsets, flips = random_windows(keys, squares.shape[1], self.image_size)
      x = mirror(crop(x, offsets, self.image_size), flips)
    else:
      x = centre_crop(x, self.image_size)
    if pca_std > 0:
      x = x + colour_shifts(keys, pca_std)[:, None, None, :]
    return self._scaled(x)

  def eval_inputs(self, squares: jax.Array) -> jax.Array:
    """float32 (B, C, S, S, 3): the eval crops of (square - mean)."""
    return self._scaled(eval_crops(self._minus_mean(squares), self.image_size,
                                   self.eval_crops))
