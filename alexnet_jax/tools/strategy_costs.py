"""What a training step costs each device under each parallelism strategy: by formula, and as
counted in the compiled program. docs/PARALLELISM.md writes the formulas out; a test holds
them equal to the compiled counts.

Per device and per step, for a global batch of B images on N devices:
  sent       bytes the device sends over its links (with ring algorithms it receives as
             many): communication.Collective.received_bytes of every collective
  state      bytes of parameters and momentum the device holds between steps
  flops      multiply-adds x 2 of the convolutions and matrix products, forward and backward
             (conv1 has no input gradient), and the input's PCA colour noise: B / N (6 M -
             2 M_conv1) + 18 B / D for M multiply-adds per image, whatever the strategy (D:
             the devices the batch is split over; a tower pair shares its images)

Formulas, from the layer table (model.layer_specs). P parameters (C of them fc8's bias),
P_conv those of conv1..conv5, b = B / N, s the bytes of a compute value, r(n) = (n - 1) / n:
  data    all-reduce of every gradient:                       2 r(N) 4 (P + 1)
  fsdp    all-gather of each parameter, reduce-scatter of its gradient, all-reduce of fc8's
          bias (stored whole):        2 r(N) 4 (P - C) + 2 r(N) 4 (C + 1)  [= data's bytes]
  hybrid  all-reduce of the convolutions' gradients:           2 r(N) 4 (P_conv + 1)
          conv5's maps gathered over the batch, fc6's and fc7's outputs over the units, each
          and its gradient's reduce-scatter:          2 r(N) B s (T pool5^2 c5 + T f6 + T f7)
          the logits from split classes to split examples, and back:  2 r(N) B C s / N
  towers  on D x T devices: each crossing's gather and its reduce-scatter (the other tower's
          activations), the sum of partial logits:  (b T ...) r(T) s, see `formula`;
          all-reduce over 'data' of the gradients of the parameters a device holds:
          2 r(D) 4 (P_dev + 1)
The +1 is the loss: its batch mean rides in the gradients' all-reduce.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import jax
import numpy as np

from alexnet_jax import config as config_lib
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import strategies
from alexnet_jax import train
from alexnet_jax.tools import communication
from alexnet_jax.tools import summary

FLOAT32 = 4   # parameters, their gradients and momentum stay float32
# The training step's input: the PCA colour noise adds a 3-vector times a 3x3 matrix per image.
PCA_FLOPS = 2 * 3 * 3


@dataclasses.dataclass(frozen=True)
class Costs:
  """One device's share of a training step under one strategy."""
  parallelism: str
  devices: int
  mesh: config_lib.MeshShape
  sent: dict            # (collective, 'forward' | 'backward') -> bytes
  state_bytes: float    # parameters + momentum
  flops: float

  @property
  def sent_bytes(self) -> float:
    return sum(self.sent.values())


def mesh_shape(config: config_lib.ModelConfig, devices: int) -> config_lib.MeshShape:
  """The mesh a strategy gets on `devices` when --mesh is left out."""
  return config_lib.MeshConfig().shape(devices, config.towers, config.parallelism)


def check_divides(config: config_lib.ModelConfig, devices: int, global_batch: int) -> None:
  """UserError unless the batch and every split of the strategy divide over `devices`
  (from shapes alone: nothing is compiled)."""
  shape = mesh_shape(config, devices)
  if global_batch % shape.data:
    raise config_lib.UserError(f'a batch of {global_batch} does not divide over the '
                               f'{shape.data} devices of the data axis.')
  mesh = jax.sharding.AbstractMesh((shape.data, shape.tower),
                                   (config_lib.DATA, config_lib.TOWER))
  strategies.param_specs(parallel.abstract_params(config), config, mesh)


def _ring(n: int) -> float:
  return (n - 1) / n


def fc_reads(config: config_lib.ModelConfig) -> list[int]:
  """Per image, the values fc6, fc7 and fc8 read across the towers: what the hybrid gathers."""
  specs = {spec.name: spec for spec in model_lib.layer_specs(config)}
  conv5 = specs['conv5']
  return [config.towers * conv5.out_size ** 2 * conv5.features,
          config.towers * specs['fc6'].features, config.towers * specs['fc7'].features]


def parameter_counts(config: config_lib.ModelConfig) -> dict:
  """{'all', 'conv', 'fc', 'classifier_bias'}: parameters of the whole net."""
  rows = summary.layer_rows(config)
  conv = sum(row['params'] for row in rows if row['layer'].startswith('conv'))
  total = sum(row['params'] for row in rows)
  return {'all': total, 'conv': conv, 'fc': total - conv, 'classifier_bias': config.num_classes}


def flops_per_image(config: config_lib.ModelConfig) -> float:
  """Training FLOPs of one image: 2 per multiply-add, forward, weight and input gradients
  (none for conv1's input, the image)."""
  rows = summary.layer_rows(config)
  return 2 * (3 * sum(row['macs'] for row in rows) - rows[0]['macs'])


def formula(config: config_lib.ModelConfig, devices: int, global_batch: int) -> Costs:
  """The strategy's costs per device from the layer table (module docstring)."""
  shape = mesh_shape(config, devices)
  counts = parameter_counts(config)
  specs = {spec.name: spec for spec in model_lib.layer_specs(config)}
  s, n, batch = np.dtype(config.dtype).itemsize, devices, global_batch
  sent = collections.Counter()
  strategy = config.parallelism
  if strategy == 'data':
    sent['all-reduce', 'backward'] = 2 * _ring(n) * FLOAT32 * (counts['all'] + 1)
    state = counts['all']
  elif strategy == 'fsdp':
    split = counts['all'] - counts['classifier_bias']
    sent['all-gather', 'forward'] = _ring(n) * FLOAT32 * split
    sent['reduce-scatter', 'backward'] = _ring(n) * FLOAT32 * split
    sent['all-reduce', 'backward'] = 2 * _ring(n) * FLOAT32 * (counts['classifier_bias'] + 1)
    state = split / n + counts['classifier_bias']
  elif strategy == 'hybrid':
    read = sum(fc_reads(config))
    sent['all-gather', 'forward'] = _ring(n) * batch * read * s
    sent['reduce-scatter', 'backward'] = _ring(n) * batch * read * s
    logits = _ring(n) * batch * config.num_classes / n * s
    sent['all-to-all', 'forward'] = sent['all-to-all', 'backward'] = logits
    sent['all-reduce', 'backward'] = 2 * _ring(n) * FLOAT32 * (counts['conv'] + 1)
    state = counts['conv'] + counts['fc'] / n
  else:
    sent, state = _towers(config, shape, global_batch, counts, specs)
  # Both devices of a tower pair see the whole images: their input work is done twice.
  flops = global_batch * (flops_per_image(config) / n + PCA_FLOPS / shape.data)
  return Costs(strategy, devices, shape, {key: value for key, value in sent.items() if value},
               2 * FLOAT32 * state, flops)


def _towers(config, shape, global_batch, counts, specs):
  """(sent, parameters per device) of the paper's towers on a (data, tower) mesh."""
  s, tower = np.dtype(config.dtype).itemsize, shape.tower
  batch = global_batch // shape.data
  sent = collections.Counter()
  names = list(specs)
  for name, spec in specs.items():
    if not spec.crosses or tower == 1:
      continue
    if name == 'fc8':  # the partial logits' sum; its transpose costs nothing
      sent['all-reduce', 'forward'] += 2 * _ring(tower) * batch * spec.features * s
      continue
    previous = specs[names[names.index(name) - 1]]
    values = previous.features * (previous.out_size ** 2 if previous.is_conv else 1)
    gathered = _ring(tower) * batch * values * tower * s
    sent['all-gather', 'forward'] += gathered
    sent['reduce-scatter', 'backward'] += gathered
  if model_lib.LRN[config.lrn_variant].across_towers and tower > 1:
    width = model_lib.LRN[config.lrn_variant].n // 2
    for spec in specs.values():
      if spec.lrn:  # the neighbour's edge channels, and their gradient back
        halo = _ring(tower) * batch * spec.conv_size ** 2 * tower * width * s
        sent['all-gather', 'forward'] += halo
        sent['reduce-scatter', 'backward'] += halo
  held = (counts['all'] - counts['classifier_bias']) / tower + counts['classifier_bias']
  sent['all-reduce', 'backward'] += 2 * _ring(shape.data) * FLOAT32 * (held + 1)
  return sent, held


# ----------------------------------------------------------------------------------
# The same, counted in the compiled training step.


def compile_step(config: config_lib.ModelConfig, devices: int, global_batch: int,
                 device_list=None):
  """(mesh, the compiled training step) of the strategy on `devices` of device_list
  (default jax.devices())."""
  mesh = parallel.make_mesh(mesh_shape(config, devices), (device_list or jax.devices())[:devices])
  return mesh, train.lower_train_step(config, mesh, global_batch).compile()


def counted(config: config_lib.ModelConfig, mesh, program) -> Costs:
  """The costs per device counted in a compiled training step: its collectives, the state
  it takes per device, its FLOPs."""
  text = program.as_text()
  sent = collections.Counter()
  for op in communication.collectives(text, mesh):
    sent[op.kind, op.direction] += op.received_bytes
  # Parameters and momentum: the state's arrays (the rest are scalars: step, rates, plateau),
  # in the layout the compiled step takes them.
  shardings = dict(jax.tree_util.tree_flatten_with_path(program.input_shardings[0][0])[0])
  held = sum(math.prod(shardings[path].shard_shape(leaf.shape)) * leaf.dtype.itemsize
             for path, leaf in jax.tree_util.tree_flatten_with_path(
                 train.abstract_state(config, config_lib.OptimizerConfig(), mesh))[0]
             if leaf.ndim)
  shape = config_lib.MeshShape(**mesh.shape)
  return Costs(config.parallelism, mesh.size, shape, dict(sent), held,
               model_flops(text))


_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(?P<name>[\w.-]+) = (?P<shape>\S+) (?P<op>[\w-]+)\('
                          r'(?P<operands>[^)]*)\)(?P<rest>.*)$')


def _dims(shape: str) -> list[int]:
  return [int(d) for d in re.match(r'\w+\[([\d,]*)\]', shape)[1].split(',') if d]


def model_flops(hlo_text: str) -> float:
  """2 x multiply-adds of every convolution and dot in compiled HLO text (one device's
  program). By name alone the net's could not be told apart: XLA's CPU compiler drops the
  names of the weight gradients' convolutions when it rewrites them."""
  shapes, ops = {}, []
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      shapes[match['name']] = match['shape']
      if match['op'] in ('convolution', 'dot'):
        ops.append(match)
  flops = 0.0
  for match in ops:
    out = math.prod(_dims(match['shape']))
    lhs, rhs = (shapes[name.strip().lstrip('%')] for name in match['operands'].split(','))
    if match['op'] == 'dot':
      contracting = [int(d) for d in re.search(r'lhs_contracting_dims=\{([\d,]*)\}',
                                               match['rest'])[1].split(',') if d]
      flops += 2 * out * math.prod(_dims(lhs)[d] for d in contracting)
    else:  # 2 x outputs x the window x the input features each output reads
      kernel_labels = re.search(r'dim_labels=\w+_(\w+)->', match['rest'])[1]
      kernel = _dims(rhs)
      window = math.prod(size for size, label in zip(kernel, kernel_labels) if label.isdigit())
      flops += 2 * out * window * kernel[kernel_labels.index('i')]
  return flops
