"""uint8 batches into model input, on the accelerator (no TensorFlow here).

The host hands over uint8 crops (half the bytes of bf16, a quarter of f32); this module
adds the paper's PCA colour noise and subtracts the mean, in float32 on the 0..255
scale, as the paper did. `normalize` is a pure function: call it inside the jitted step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# cuda-convnet2's per-channel ImageNet mean (RGB, 0..255): the usual stand-in for the
# paper's per-pixel mean image.
CHANNEL_MEAN = np.array([127.30, 119.72, 104.91], np.float32)
# Caffe's input convention (ModelConfig.input_convention='caffe', bvlc_alexnet and the ONNX
# Model Zoo's file of it): BGR on 0..255 minus the mean pixel of Caffe's ImageNet mean image
# (python/caffe/imagenet/ilsvrc_2012_mean.npy averaged over pixels, as Caffe's classification
# example does), in B, G, R order.
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], np.float32)
CAFFE_MEAN_RGB = CAFFE_MEAN_BGR[::-1].copy()
# ImageNet's per-channel pixel std on 0..255 (torchvision's 0.229, 0.224, 0.225 x 255).
# The paper does not divide by it; He-normal init assumes unit-scale input and needs it.
CHANNEL_STD = np.array([58.395, 57.12, 57.375], np.float32)

# Eigen-decomposition of the RGB pixel covariance on ImageNet, for pixels on 0..1
# (fb.resnet.torch's constants). The added colour, sum_i p_i alpha_i lambda_i, is in
# pixel units, so on 0..255 every lambda scales by 255 (55.46, 4.79, 1.15). Using the
# eigenvalues of the 0..255 covariance instead (x 255**2) would shift pixels by ~1500.
_EIGVAL_0_1 = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVAL = 255.0 * _EIGVAL_0_1
# Columns are the eigenvectors p_1, p_2, p_3 (RGB).
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float32)


def pca_color_shift(rng: jax.Array, batch_shape: tuple[int, ...], std: float) -> jax.Array:
  """Per-image RGB shifts sum_i p_i alpha_i lambda_i with alpha_i ~ N(0, std).

  Returns float32 of shape batch_shape + (3,): one draw per image (paper section 4.1).
  """
  alpha = std * jax.random.normal(rng, batch_shape + (3,), jnp.float32)
  return (alpha * PCA_EIGVAL) @ PCA_EIGVEC.T


def normalize(images: jax.Array, *, mean: jax.Array | np.ndarray,
              std: jax.Array | np.ndarray | None = None,
              pca_std: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
  """uint8 images (..., H, W, 3) -> float32 model input on the 0..255 scale.

  Args:
    images: uint8 (or any real) array whose last three axes are H, W, RGB; leading axes
      are the batch (and, for 10-crop evaluation, the crops).
    mean: (3,) per-channel mean or (H, W, 3) mean image, on 0..255.
    std: (3,) per-channel std to divide by after subtracting the mean, or None (paper).
    pca_std: std of the PCA colour noise (paper: 0.1); 0 for evaluation.
    rng: PRNG key, required when pca_std > 0. One draw per image: split it per step
      (e.g. fold_in(key, step)) so steps differ.

  Returns:
    float32 (images + colour shift - mean), same shape as images. Not clipped, as in
    the paper.
  """
  x = images.astype(jnp.float32)
  if pca_std > 0:
    if rng is None:
      raise ValueError('normalize needs rng when pca_std > 0.')
    shift = pca_color_shift(rng, x.shape[:-3], pca_std)
    x = x + shift[..., None, None, :]
  x = x - jnp.asarray(mean, jnp.float32)
  return x if std is None else x / jnp.asarray(std, jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Normalizer:
  """The model input of a run: (images + PCA colour shift - mean) / std, in RGB, or in BGR
  for a net of Caffe's input convention (mean then in RGB order: CAFFE_MEAN_RGB)."""
  mean: np.ndarray
  std: np.ndarray | None = None
  bgr: bool = False

  def __call__(self, images: jax.Array, *, pca_std: float = 0.0,
               rng: jax.Array | None = None) -> jax.Array:
    x = normalize(images, mean=self.mean, std=self.std, pca_std=pca_std, rng=rng)
    return x[..., ::-1] if self.bgr else x

  def eval_inputs(self, images: jax.Array) -> jax.Array:
    """uint8 eval crops (B, C, S, S, 3) from the host -> float32, same shape."""
    return self(images)
