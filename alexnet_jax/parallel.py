"""Where the towers live: the ('data', 'tower') mesh and the one shard_map of the net.

Mesh axis 'tower' has size 1 or 2. With 2, device (d, t) holds tower t of data shard d,
as the paper's two GPUs did; with 1, every device holds both towers and runs them one
after the other. Axis 'data' splits the batch. Inside the shard_map each device runs
its local towers; the only collectives over 'tower' are the four crossings the model
asks for (all-gather into conv3, fc6, fc7; a sum of partial logits into fc8), and with
Caffe's LRN an all-gather of the two edge channels each tower's neighbour reads.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax import model as model_lib
from alexnet_jax.config import DATA, TOWER, MeshShape, ModelConfig

def make_mesh(shape: MeshShape, devices=None) -> jax.sharding.Mesh:
  """The ('data', 'tower') mesh.

  Axes are Auto: outside the shard_map XLA places values (Flax's partitioning names
  become sharding hints), inside it every collective is explicit.
  """
  return jax.make_mesh((shape.data, shape.tower), (DATA, TOWER),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


@dataclasses.dataclass(frozen=True)
class MeshTowers(model_lib.LocalTowers):
  """Crossings as collectives over the mesh's 'tower' axis, inside the shard_map.

  tower_devices devices share the towers; each holds local_towers of them, and the
  towers on one device are concatenated before the collective joins the devices.
  """
  tower_devices: int = 1

  def gather(self, parts):
    local = super().gather(parts)
    if self.tower_devices == 1:
      return local
    return lax.all_gather(local, TOWER, axis=local.ndim - 1, tiled=True)

  def sum(self, parts):
    local = super().sum(parts)
    return lax.psum(local, TOWER) if self.tower_devices > 1 else local

  def tower_index(self, local):
    if self.tower_devices == 1:
      return local
    return lax.axis_index(TOWER) * self.local_towers + local

  def example_ids(self, batch):
    return lax.axis_index(DATA) * batch + jnp.arange(batch)

  def halo(self, parts, width):
    if self.tower_devices == 1:
      return super().halo(parts, width)
    # One tower per device, so one neighbour: tower 0 sends its last `width` channels,
    # tower 1 its first, and each takes the other's out of the gather. Slicing the
    # zero-padded tower keeps the zeros past the layer's ends however few channels it has.
    (x,) = parts
    channels = x.shape[-1]
    padded = jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((width, width),))
    first = lax.axis_index(TOWER) == 0
    sent = jnp.where(first, padded[..., channels:channels + width], padded[..., width:2 * width])
    got = lax.all_gather(sent, TOWER, axis=x.ndim - 1, tiled=True)
    return [jnp.where(first,
                      jnp.concatenate([padded[..., :channels + width], got[..., width:]], -1),
                      jnp.concatenate([got[..., :width], padded[..., width:]], -1))]


def unboxed(boxed_params):
  """The arrays inside Flax's partitioning boxes (no sharding constraint applied)."""
  return jax.tree.map(lambda box: box.value, boxed_params,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def param_specs(boxed_params, mesh: jax.sharding.Mesh):
  """PartitionSpecs of the parameters: the tower axis on 'tower' where it has size 2."""
  specs = nn.get_partition_spec(boxed_params)
  if mesh.shape[TOWER] > 1:
    return specs
  # A tower axis of size 1 shards nothing; saying so keeps the towers' values
  # tower-invariant, which the shard_map's type checks (check_vma) rely on.
  return jax.tree.map(lambda _: P(), specs, is_leaf=lambda x: isinstance(x, P))


def param_shardings(boxed_params, mesh):
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(boxed_params, mesh),
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh) -> NamedSharding:
  """Batches are split over 'data' and replicated over 'tower'."""
  return NamedSharding(mesh, P(DATA))


def abstract_params(config: ModelConfig):
  """Shapes and partitioning names of the parameters, without computing them."""
  return jax.eval_shape(lambda: model_lib.init_params(config, jax.random.key(0)))


def abstract_sharded_params(config: ModelConfig, mesh):
  """ShapeDtypeStructs of the parameters with their shardings (lowering, restoring)."""
  boxed = abstract_params(config)
  return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                  sharding=sharding),
                      unboxed(boxed), param_shardings(boxed, mesh))


def init_sharded_params(config: ModelConfig, rng: jax.Array, mesh):
  """Initializes the parameters directly in their shardings (no host copy of the net)."""
  abstract = abstract_params(config)
  shardings = param_shardings(abstract, mesh)
  init = jax.jit(lambda key: unboxed(model_lib.init_params(config, key)),
                 out_shardings=shardings)
  return init(rng)


@functools.cache
def sharded_forward(config: ModelConfig, mesh, features: str | None = None) -> Callable:
  """forward(params, images, dropout_rng=None, train=False) -> logits, as one shard_map.

  One per (config, mesh, features), shared by every mode that runs the net.

  params carry the shardings of `param_shardings`, images `batch_sharding`; the logits
  come back split over 'data'. Take gradients of a loss of these logits from outside:
  the transpose of the shard_map sums the parameter gradients over 'data'.
  With `features='fc7'` (any of conv1..fc7) it returns (logits, activations) where the
  activations of all towers are concatenated on the last axis (split over 'tower').
  """
  tower_devices = mesh.shape[TOWER]
  exchange = MeshTowers(local_towers=config.towers // tower_devices, tower_devices=tower_devices)
  net = model_lib.AlexNet(config, exchange)
  specs = param_specs(abstract_params(config), mesh)
  feature_spec = P(DATA, *([None] * (0 if features in ('fc6', 'fc7') else 2)),
                   TOWER if tower_devices > 1 else None)

  def forward(params, images, dropout_rng=None, train=False):
    if dropout_rng is None:
      dropout_rng = jax.random.key(0)

    def body(params, images, dropout_rng):
      if features is None:
        return net.apply({'params': params}, images, train=train, dropout_rng=dropout_rng)
      logits, state = net.apply({'params': params}, images, train=train,
                                dropout_rng=dropout_rng, mutable=['intermediates'])
      towers = state['intermediates'][f'{features}_output'][0]
      return logits, jnp.concatenate(towers, axis=-1)

    out_specs = P(DATA) if features is None else (P(DATA), feature_spec)
    return jax.shard_map(body, mesh=mesh, in_specs=(specs, P(DATA), P()),
                         out_specs=out_specs)(params, images, dropout_rng)

  return forward
