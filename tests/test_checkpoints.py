"""Checkpoints' rules, each checked fast on a tiny state (the slow runs check them in use)."""

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax import checkpoints
from alexnet_jax import config as config_lib
from tests import meshes

CONFIG = dataclasses.asdict(config_lib.ModelConfig(num_classes=10))


def _state(value: float, step: int) -> dict:
  return {'step': jnp.int32(step), 'params': {'w': jnp.full((4, 8), value, jnp.float32)}}


def _abstract() -> dict:
  replicated = NamedSharding(meshes.mesh(1, 1), P())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      _state(0.0, 0))


def test_a_restore_compares_the_arrays_with_the_digests_saved_with_them(tmp_path):
  store = checkpoints.Checkpoints(str(tmp_path), CONFIG)
  store.save(1, _state(1.0, 1))
  store.save(2, _state(2.0, 2))
  store.close()
  # Step 2's arrays replaced by step 1's: whole, finite and readable, but not step 2's.
  steps = tmp_path / 'checkpoints'
  shutil.rmtree(steps / '2' / 'state')
  shutil.copytree(steps / '1' / 'state', steps / '2' / 'state')
  store = checkpoints.Checkpoints(str(tmp_path), CONFIG)
  restored = store.restore(_abstract())
  store.close()
  assert int(restored['step']) == 1 and store.steps() == [1]
  assert [name.split('-')[0] for name in os.listdir(tmp_path / 'corrupt')] == ['2']
