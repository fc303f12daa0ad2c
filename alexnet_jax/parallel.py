"""Where the net lives: the ('data', 'tower') mesh, the parameters' shardings under the
strategy's rules (strategies.py), and the one forward every mode runs.

Mesh axis 'tower' has size 1 or 2. With 2, device (d, t) holds tower t of data shard d,
as the paper's two GPUs did; with 1, every device holds both towers and runs them one
after the other. Axis 'data' splits the batch. Under --parallelism=towers, inside the
shard_map each device runs its local towers; the only collectives over 'tower' are the
four crossings the model asks for (all-gather into conv3, fc6, fc7; a sum of partial
logits into fc8), and with Caffe's LRN an all-gather of the two edge channels each
tower's neighbour reads. The hybrid and fsdp run in the same shard_map with their own
explicit collectives over 'data'; data parallelism runs under jit (sharded_forward).
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
from alexnet_jax import strategies
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
  unit_devices > 1 (the 2014 hybrid): the 'data' devices split each fully-connected layer's
  units and run them on the whole batch; the convolutions keep a split of the batch.
  """
  tower_devices: int = 1
  unit_devices: int = 1

  def local_units(self, units):
    return units // self.unit_devices

  def unit_offset(self, local):
    return lax.axis_index(DATA) * local if self.unit_devices > 1 else 0

  def whole(self, x):
    """Conv maps: every example (the paper's first scheme: all-gather over the batch);
    fully-connected outputs: every unit (all-gather over the units)."""
    if self.unit_devices == 1:
      return x
    return lax.all_gather(x, DATA, axis=0 if x.ndim == 4 else x.ndim - 1, tiled=True)

  def logits(self, x):
    """(whole batch, a split of the classes) -> (a split of the batch, every class)."""
    if self.unit_devices == 1:
      return x
    return lax.all_to_all(x, DATA, split_axis=0, concat_axis=1, tiled=True)

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
    if self.unit_devices > 1:  # only the fully-connected layers draw dropout: the whole batch
      return jnp.arange(batch)
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


def param_specs(config: ModelConfig, mesh):
  """PartitionSpecs of the parameters under config.parallelism's rules (strategies.py)."""
  return strategies.param_specs(abstract_params(config), config, mesh)


def param_shardings(config: ModelConfig, mesh):
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(config, mesh),
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh) -> NamedSharding:
  """Batches are split over 'data' and replicated over 'tower'."""
  return NamedSharding(mesh, P(DATA))


@functools.cache
def abstract_params(config: ModelConfig):
  """Shapes and logical axis names of the parameters, without computing them."""
  return jax.eval_shape(lambda: model_lib.init_params(config, jax.random.key(0)))


def abstract_sharded_params(config: ModelConfig, mesh):
  """ShapeDtypeStructs of the parameters with their shardings (lowering, restoring)."""
  return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                  sharding=sharding),
                      unboxed(abstract_params(config)), param_shardings(config, mesh))


def init_sharded_params(config: ModelConfig, rng: jax.Array, mesh):
  """Initializes the parameters directly in their shardings (no host copy of the net)."""
  init = jax.jit(lambda key: unboxed(model_lib.init_params(config, key)),
                 out_shardings=param_shardings(config, mesh))
  return init(rng)


@functools.cache
def sharded_forward(config: ModelConfig, mesh, features: str | None = None) -> Callable:
  """forward(params, images, dropout_rng=None, train=False) -> logits, under the strategy.

  One per (config, mesh, features), shared by every mode that runs the net.

  params carry the shardings of `param_shardings`, images `batch_sharding`; the logits
  come back split over 'data'. Take gradients of a loss of these logits from outside.
  With `features='fc7'` (any of conv1..fc7) it returns (logits, activations) where the
  activations of all towers are concatenated on the last axis.

  towers, hybrid, fsdp: one shard_map whose collectives are explicit: the towers'
  crossings over 'tower', the hybrid's gathers of conv5's maps over the batch and of the
  units of fc6 and fc7, fsdp's gathers of each layer's parameters. Its transpose sums the
  gradients of parameters every 'data' device holds whole, and turns each all-gather into
  a reduce-scatter. data: the net under plain jit, its layouts pinned by the rules; XLA's
  partitioner inserts the collectives (strategies.py).
  """
  if config.parallelism not in strategies.EXPLICIT:
    return _partitioned_forward(config, mesh, features)
  tower_devices = mesh.shape[TOWER]
  exchange = MeshTowers(local_towers=config.towers // tower_devices, tower_devices=tower_devices,
                        unit_devices=strategies.devices(config, mesh, 'units'))
  net = model_lib.AlexNet(config, exchange)
  specs = param_specs(config, mesh)
  gathered = strategies.gathered(config, mesh, specs)
  fc_features = features in ('fc6', 'fc7')
  feature_spec = P(DATA, *([None] * (0 if fc_features else 2)),
                   TOWER if tower_devices > 1 else None)

  def forward(params, images, dropout_rng=None, train=False):
    if dropout_rng is None:
      dropout_rng = jax.random.key(0)

    def body(params, images, dropout_rng):
      params = _gather_parameters(params, gathered)
      out = _apply(net, params, images, dropout_rng, train, features)
      if features is None or not (fc_features and exchange.unit_devices > 1):
        return out
      # The hybrid's fully-connected outputs cover every example and a split of the units:
      # every unit, then this device's examples (as the logits).
      logits, towers = out
      whole = jnp.concatenate([exchange.whole(part)
                               for part in jnp.split(towers, config.towers, axis=-1)], axis=-1)
      rows = logits.shape[0]
      return logits, lax.dynamic_slice_in_dim(whole, lax.axis_index(DATA) * rows, rows)

    out_specs = P(DATA) if features is None else (P(DATA), feature_spec)
    return jax.shard_map(body, mesh=mesh, in_specs=(specs, P(DATA), P()),
                         out_specs=out_specs)(params, images, dropout_rng)

  return forward


def _gather_parameters(params, gathered):
  """fsdp: each parameter whole, gathered over 'data' along the axes it is stored split on
  (gathered: {layer: {name: axes}}), in a scope that names its layer."""
  params = {layer: dict(leaves) for layer, leaves in params.items()}
  for layer, leaves in gathered.items():
    with jax.named_scope(f'parameters_of_{layer}'):
      for name, axes in leaves.items():
        for axis in axes:
          params[layer][name] = lax.all_gather(params[layer][name], DATA, axis=axis, tiled=True)
  return params


def _partitioned_forward(config: ModelConfig, mesh, features: str | None) -> Callable:
  """The net with every tower on every device, laid out by the strategy's rules: XLA's
  partitioner inserts what the layouts need (data parallelism: the gradients' all-reduce)."""
  net = model_lib.AlexNet(config)
  table = strategies.rules(config, mesh)
  feature_names = (model_lib.IMAGE_MAPS if features not in ('fc6', 'fc7')
                   else (model_lib.LOGITS[0], model_lib.FC_OUTPUTS[1]))

  def forward(params, images, dropout_rng=None, train=False):
    if dropout_rng is None:
      dropout_rng = jax.random.key(0)
    # The rules and the mesh the logical names resolve against, while the net is traced.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(table):
      out = _apply(net, params, images, dropout_rng, train, features)
      return out if features is None else (out[0], model_lib.place(out[1], feature_names))

  return forward


def _apply(net, params, images, dropout_rng, train, features):
  """The net's logits, and with `features` that layer's output of all towers."""
  if features is None:
    return net.apply({'params': params}, images, train=train, dropout_rng=dropout_rng)
  logits, state = net.apply({'params': params}, images, train=train,
                            dropout_rng=dropout_rng, mutable=['intermediates'])
  towers = state['intermediates'][f'{features}_output'][0]
  return logits, jnp.concatenate(towers, axis=-1)
