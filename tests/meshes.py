"""Small shared pieces for mesh tests: a tiny config, its parameters and compiled steps."""

import dataclasses
import functools

import flax.linen as nn
import jax
import numpy as np
import optax

from alexnet_jax import config as config_lib
from alexnet_jax import model as model_lib
from alexnet_jax import parallel

TINY = config_lib.ModelConfig(num_classes=10, image_size=67, width=0.125, init='he')
# Caffe's bvlc_alexnet options. At 72 pixels conv1 leaves its last pixel unread (16
# positions, not 17) and each of the three pools pads its last window (8, 4, 2).
CAFFE = dataclasses.replace(TINY, image_size=72, lrn_variant='caffe', conv1_padding='valid',
                            pool_rounding='ceil', input_convention='caffe')
BATCH = 8


def mesh(data: int, tower: int) -> jax.sharding.Mesh:
  return parallel.make_mesh(config_lib.MeshShape(data, tower), jax.devices()[:data * tower])


@functools.cache
def host_params(config=TINY, seed=0):
  return nn.unbox(model_lib.init_params(config, jax.random.key(seed)))


def batch(config=TINY, seed=1, scale=1.0):
  """(images, labels); scale: the images' std (60: about that of 0..255 pixels less the mean)."""
  rng = np.random.default_rng(seed)
  images = scale * rng.normal(size=(BATCH, config.image_size, config.image_size, 3))
  images = images.astype(np.float32)
  labels = rng.integers(0, config.num_classes, size=(BATCH,)).astype(np.int32)
  return images, labels


def place(mesh_, config, params, images, labels):
  """Puts host arrays onto the mesh with the shardings the forward expects."""
  shardings = parallel.param_shardings(config, mesh_)
  params = jax.device_put(params, shardings)
  data = parallel.batch_sharding(mesh_)
  return params, jax.device_put(images, data), jax.device_put(labels, data)


@functools.cache
def compiled_loss_and_grad(shape: tuple[int, int], config=TINY, train=False):
  """jit(value_and_grad) of the mean cross-entropy on a mesh, with logits; cached per mesh."""
  mesh_ = mesh(*shape)
  forward = parallel.sharded_forward(config, mesh_)

  def loss(params, images, labels, rng):
    logits = forward(params, images, rng, train=train)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  return mesh_, jax.jit(jax.value_and_grad(loss, has_aux=True))
