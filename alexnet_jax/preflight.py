"""Pre-flight: the bytes a configuration needs per device, against the device's memory.

Computed from shapes alone (jax.eval_shape and the model's layer table) before anything
is compiled or allocated, so a configuration that cannot fit stops with one line and its
numbers instead of failing, or hanging, inside XLA. Per device:
  parameters   the float32 parameters the device holds (towers split over 'tower')
  optimizer    the optimizer's state (the paper's SGD: one momentum per parameter)
  gradients    one per parameter, during a training step
  activations  training: every layer's outputs for the device's share of the batch and
               of the towers, kept for the backward pass, and the float input;
               evaluation: the largest layer's input and output at once.
They are lower bounds (XLA adds temporaries and buffers): a configuration refused here
cannot run; one that passes may still be tight. The memory is the runtime's limit on an
accelerator, and the available RAM, shared by all of a process's CPU devices, on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from alexnet_jax.config import ModelConfig, OptimizerConfig, UserError
from alexnet_jax import model as model_lib
from alexnet_jax import optimizer as optimizer_lib
from alexnet_jax import parallel

GIB = 2**30


class DoesNotFitError(UserError):
  """The configuration needs more memory than its devices have."""


@dataclasses.dataclass(frozen=True)
class Footprint:
  """Bytes per device."""
  parameters: int
  optimizer: int
  gradients: int
  activations: int

  @property
  def total(self) -> int:
    return self.parameters + self.optimizer + self.gradients + self.activations

  def __str__(self) -> str:
    parts = [(name, getattr(self, name)) for name in
             ('parameters', 'optimizer', 'gradients', 'activations')]
    return ', '.join(f'{name} {_gib(size)}' for name, size in parts if size)


def _gib(size: float) -> str:
  return f'{size / GIB:,.1f} GiB' if size >= GIB else f'{size / 2**20:,.1f} MiB'


def _bytes(shape, dtype, sharding=None) -> int:
  shard = sharding.shard_shape(tuple(shape)) if sharding is not None else shape
  return math.prod(shard) * np.dtype(dtype).itemsize


def _kept_for_backward(spec: model_lib.LayerSpec) -> int:
  """Values per example and tower a layer keeps for the backward pass."""
  if not spec.is_conv:
    return spec.features
  conv = spec.conv_size ** 2 * spec.features
  pooled = spec.out_size ** 2 * spec.features if spec.pool else 0
  return conv * (2 if spec.lrn else 1) + pooled  # ReLU (and LRN) output, then the pool's


def _inference_peak(specs, image_values: int, towers: int) -> int:
  """Values per example alive at once in a forward pass: the largest layer's input + output."""
  previous, peak = image_values, 0  # the image is shared by the towers
  for spec in specs:
    produced = (spec.conv_size ** 2 if spec.is_conv else 1) * spec.features * towers
    peak = max(peak, previous + produced)
    previous = (spec.out_size ** 2 if spec.is_conv else 1) * spec.features * towers
  return peak


def footprint(model_config: ModelConfig, opt_config: OptimizerConfig,
              mesh, global_batch: int, training: bool, crops: int = 1) -> Footprint:
  """What one device of `mesh` needs for a training step or an evaluation of global_batch."""
  params = parallel.abstract_sharded_params(model_config, mesh)
  leaves = jax.tree.leaves(params)
  parameters = sum(_bytes(leaf.shape, leaf.dtype, leaf.sharding) for leaf in leaves)
  examples = global_batch * crops // mesh.shape[parallel.DATA]
  towers = model_config.towers // mesh.shape[parallel.TOWER]
  value = np.dtype(model_config.dtype).itemsize
  specs = model_lib.layer_specs(model_config)
  size = model_config.image_size
  if not training:
    return Footprint(parameters, 0, 0,
                     examples * _inference_peak(specs, size * size * 3, towers) * value)
  # Optimizer leaves mirror the parameters' shapes, and take their shardings.
  sharding_of = {leaf.shape: leaf.sharding for leaf in leaves}
  state = jax.eval_shape(optimizer_lib.make(opt_config, params).init, params)
  optimizer = sum(_bytes(leaf.shape, leaf.dtype, sharding_of.get(leaf.shape))
                  for leaf in jax.tree.leaves(state))
  kept = sum(_kept_for_backward(spec) for spec in specs)
  activations = examples * (towers * kept * value + size * size * 3 * 4)
  return Footprint(parameters, optimizer, parameters, activations)


def _available_ram() -> int | None:
  try:
    with open('/proc/meminfo') as f:
      fields = dict(line.split(':', 1) for line in f)
    return int(fields['MemAvailable'].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    pass
  try:
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError):
    return None


def device_memory(device) -> tuple[int, str] | None:
  """(bytes free for one device, what they are), or None where the runtime does not say."""
  if device.platform == 'cpu':
    ram = _available_ram()
    devices = jax.local_device_count()
    if ram is None:
      return None
    shared = f' ({_gib(ram)} shared by {devices} CPU devices)' if devices > 1 else ''
    return ram // devices, f'of available RAM{shared}'
  stats = device.memory_stats() or {}
  if 'bytes_limit' not in stats:
    return None
  return stats['bytes_limit'] - stats.get('bytes_in_use', 0), f'of {device.device_kind} memory'


def check(model_config, opt_config, mesh, global_batch: int, training: bool,
          crops: int = 1) -> Footprint:
  """DoesNotFitError, with the numbers, if the footprint exceeds a device's memory."""
  needed = footprint(model_config, opt_config, mesh, global_batch, training, crops)
  device = jax.local_devices()[0]
  memory = device_memory(device)
  if memory is not None and needed.total > memory[0]:
    what = 'a training step' if training else 'an evaluation'
    raise DoesNotFitError(
        f'{what} of this configuration needs at least {_gib(needed.total)} per device '
        f'({needed}; {global_batch * crops} images over {mesh.shape[parallel.DATA]} data '
        f'shard(s)) but a device has {_gib(memory[0])} {memory[1]}: lower --image_size, '
        '--width or the batch size, or use more devices.')
  return needed
