"""Synthetic uint8 batches made on the devices: benchmarks and smoke runs without TF."""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp

from alexnet_jax import parallel


def synthetic_batches(global_batch: int, image_size: int, num_classes: int, mesh,
                      seed: int = 0, num_distinct: int = 2) -> Iterator[dict]:
  """Yields {'images': uint8 (B, H, W, 3), 'labels': int32 (B,)} forever.

  The batches are created once, directly in their sharding over the mesh's 'data'
  axis (no host work or transfer per step), and cycled: what a step costs with an
  input pipeline that is never the bottleneck.
  """
  sharding = parallel.batch_sharding(mesh)

  def make(key):
    image_key, label_key = jax.random.split(key)
    images = jax.random.randint(image_key, (global_batch, image_size, image_size, 3), 0, 256,
                                jnp.int32).astype(jnp.uint8)
    labels = jax.random.randint(label_key, (global_batch,), 0, num_classes, jnp.int32)
    return {'images': images, 'labels': labels}

  make = jax.jit(make, out_shardings={'images': sharding, 'labels': sharding})
  batches = [make(jax.random.fold_in(jax.random.key(seed), i)) for i in range(num_distinct)]
  step = 0
  while True:
    yield batches[step % num_distinct]
    step += 1
