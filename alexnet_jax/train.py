"""Training: the loss, the jitted step over the mesh."""

from __future__ import annotations

import jax
import numpy as np
import optax

from alexnet_jax import model as model_lib
from alexnet_jax import parallel


def loss_fn(forward, params, images, labels, dropout_rng):
  """Mean softmax cross-entropy of the training-mode forward pass."""
  logits = forward(params, images, dropout_rng, train=True)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def lower_train_step(config: model_lib.ModelConfig, mesh, global_batch: int):
  """The jitted training step lowered for abstract inputs on `mesh` (no data, no compute)."""
  forward = parallel.sharded_forward(config, mesh)
  params = parallel.abstract_sharded_params(config, mesh)
  size = config.image_size
  images = jax.ShapeDtypeStruct((global_batch, size, size, 3), np.float32,
                                sharding=parallel.batch_sharding(mesh))
  labels = jax.ShapeDtypeStruct((global_batch,), np.int32, sharding=parallel.batch_sharding(mesh))
  grad = jax.jit(jax.grad(lambda p, x, y, r: loss_fn(forward, p, x, y, r)))
  with jax.set_mesh(mesh):
    return grad.lower(params, images, labels, jax.random.key(0))
