"""Parallelism strategies as data: one table of rules per strategy, from the model's logical
axis names (model.py) to the axes of the ('data', 'tower') mesh.

Each table is a Flax logical-axis-rules list (`nn.logical_axis_rules`), read in order: a
logical axis takes the first rule's mesh axis that no other axis of the same array has
taken, and an axis no rule names is not split. The same mechanism as big_vision's sharding
rules, MaxText's `logical_axis_rules` and t5x's partitioning.

  towers  (2012) Each tower's parameters on its device of the 'tower' axis.
  hybrid  (2014, "One weird trick") The convolutions data-parallel; fc6, fc7 and fc8 split
          by units ('units' on 'data': the exchange runs them on the whole batch, gathers
          conv5's maps over the batch, the FC layers' inputs over units, and sums only the
          convolutions' gradients), their parameters split with them.
  data    Every device holds every parameter; the activations are split over 'data' by the
          batch in every layer ('batch', 'fc_batch'), and XLA's partitioner sums the
          gradients.
  fsdp    Data parallelism with each parameter (and its momentum, which takes the
          parameter's layout) stored split over 'data' by its output units (fc8 by its
          inputs: its 1000 classes would limit the device counts; its bias stays whole),
          gathered whole before use (GATHERED).

The batch is split over 'data' in every strategy: the input pipeline's layout, and the
shard_map's (parallel.sharded_forward) for the strategies whose collectives are explicit
(EXPLICIT; docs/DESIGN.md says why those and not `data`). The rules give the parameters'
shardings everywhere (initialization, optimizer state, restore, the compiled step),
`data`'s activation constraints and the hybrid's split of units.

A rule that names a mesh axis of size 1 splits nothing and is dropped, so every strategy
on one device is that device running the whole net (and the towers' parameters stay
tower-invariant inside the shard_map, which its type checks rely on).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

from alexnet_jax.config import DATA, TOWER, ModelConfig, UserError

RULES = {
    'towers': (('towers', TOWER),),
    'hybrid': (('units', DATA), ('fc_out', DATA), ('classes', DATA)),
    'data': (('batch', DATA), ('fc_batch', DATA)),
    'fsdp': (('conv_out', DATA), ('fc_out', DATA), ('fc_in', DATA)),
}
# The strategies whose parameter splits are storage only: each layer gathers its
# parameters whole before use (and the gradients come back reduce-scattered).
GATHERED = ('fsdp',)
# The strategies whose collectives the program states itself, in one shard_map over the
# mesh (parallel.sharded_forward); `data` leaves them to XLA's partitioner. See
# docs/DESIGN.md for why.
EXPLICIT = ('towers', 'hybrid', 'fsdp')

# What a split parameter axis holds, for the error that says it does not divide.
_WHAT = {'towers': 'towers', 'conv_out': 'output channels per tower', 'fc_out': 'units per tower',
         'fc_in': 'inputs per tower', 'classes': 'classes'}


def rules(config: ModelConfig, mesh) -> tuple[tuple[str, str], ...]:
  """The strategy's rules on this mesh, less those naming a mesh axis of size 1."""
  return tuple((name, axis) for name, axis in RULES[config.parallelism]
               if mesh.shape[axis] > 1)


def param_specs(boxed_params, config: ModelConfig, mesh):
  """PartitionSpecs of the parameters (boxed with their logical names) under the strategy's
  rules. UserError, before anything is compiled, if a split axis does not divide over its
  devices."""
  names = nn.get_partition_spec(boxed_params)
  specs = nn.logical_to_mesh(names, rules(config, mesh))
  is_spec = lambda x: isinstance(x, P)
  for (path, spec), logical, leaf in zip(
      jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0],
      jax.tree.leaves(names, is_leaf=is_spec), jax.tree.leaves(nn.unbox(boxed_params))):
    for size, axis, name in zip(leaf.shape, spec, logical):
      devices = math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis or ()))
      if size % devices:
        layer = jax.tree_util.keystr(path[:1], simple=True)
        flag = '--num_classes' if name == 'classes' else '--width'
        raise UserError(
            f'--parallelism={config.parallelism} splits {layer}\'s {size} {_WHAT[name]} over '
            f'{devices} devices, which does not divide them: use a device count that '
            f'divides {size} (or another {flag}), or another --parallelism.')
  return specs


def devices(config: ModelConfig, mesh, name: str) -> int:
  """How many devices split the logical axis `name` under the strategy's rules."""
  axes = dict(rules(config, mesh)).get(name, ())
  return math.prod(mesh.shape[axis] for axis in ((axes,) if isinstance(axes, str) else axes))


def gathered(config: ModelConfig, mesh, specs) -> dict:
  """{layer: {parameter: the axes stored split over 'data'}}, for a strategy that gathers
  its parameters before use; {} for the others."""
  if config.parallelism not in GATHERED:
    return {}
  return {layer: {name: [axis for axis, mesh_axis in enumerate(spec) if mesh_axis == DATA]
                  for name, spec in leaves.items() if DATA in spec}
          for layer, leaves in specs.items() if any(DATA in spec for spec in leaves.values())}
