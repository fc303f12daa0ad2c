"""--mode=summary: the layer table and the communication of the compiled training step.

The table is computed from the same `layer_specs` the model is built from. The
communication is not asserted by hand: it is read from the HLO that XLA compiles for
the training step on the current mesh.
"""

from __future__ import annotations

import collections

import jax

from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax.config import ModelConfig
from alexnet_jax.tools import communication


def layer_rows(config: ModelConfig) -> list[dict]:
  """Per layer: shapes per tower and whole, kernel, parameters, multiply-adds per image."""
  towers = config.towers
  lrn = 'LRN over both towers' if model_lib.LRN[config.lrn_variant].across_towers else 'LRN'
  rows = []
  for spec in model_lib.layer_specs(config):
    classifier = spec.name == 'fc8'
    if spec.is_conv:
      kernel = f'{spec.kernel}x{spec.kernel}x{spec.in_features}, /{spec.stride}'
      conv_out = spec.conv_size ** 2 * spec.features
      macs = conv_out * spec.kernel ** 2 * spec.in_features * towers
      weights = spec.kernel ** 2 * spec.in_features * spec.features * towers
      tower_shape = f'{spec.out_size}x{spec.out_size}x{spec.features}'
      whole_shape = f'{spec.out_size}x{spec.out_size}x{spec.features * towers}'
    else:
      kernel = f'{spec.in_features}'
      macs = spec.in_features * spec.features * towers
      weights = macs
      tower_shape = f'{spec.features}' if not classifier else f'{spec.features} (partial)'
      whole_shape = f'{spec.features * (1 if classifier else towers)}'
    biases = spec.features * (1 if classifier else towers)
    after = [op for op, on in (('ReLU', spec.relu), (lrn, spec.lrn),
                               ('pool', spec.pool), ('dropout', spec.dropout)) if on]
    rows.append(dict(layer=spec.name, kernel=kernel, features=spec.features,
                     conv=(f'{spec.conv_size}x{spec.conv_size}' if spec.is_conv else '-'),
                     after=', '.join(after) or 'softmax', tower=tower_shape,
                     whole=whole_shape, params=weights + biases, macs=macs,
                     crosses='yes' if spec.crosses else 'no'))
  return rows


def format_layer_table(config: ModelConfig) -> str:
  rows = layer_rows(config)
  header = ('layer', 'kernel/tower, stride', 'out/tower', 'conv HxW', 'then',
            'output/tower', 'output (net)', 'params', 'mult-adds/image', 'reads other tower')
  lines = [[r['layer'], r['kernel'], str(r['features']), r['conv'], r['after'], r['tower'],
            r['whole'], f"{r['params']:,}", f"{r['macs']:,}", r['crosses']] for r in rows]
  return text_table(header, lines)


def text_table(header, lines) -> str:
  """Columns padded to their widest cell, under the header and a rule of dashes."""
  widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
  fmt = lambda cells: '  '.join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
  return '\n'.join([fmt(header), fmt(['-' * w for w in widths])] + [fmt(l) for l in lines])


def communication_rows(ops: list[communication.Collective], local_batch: int) -> list[list[str]]:
  """Collectives grouped by (direction, axis, layer, kind), bytes per image and per step."""
  grouped = collections.OrderedDict()
  for op in sorted(ops, key=lambda o: (o.direction != 'forward', o.axis, o.layer, o.kind)):
    key = (op.direction, op.axis, op.layer, op.kind)
    count, received = grouped.get(key, (0, 0.0))
    grouped[key] = (count + 1, received + op.received_bytes)
  return [[direction, axis, layer, kind, str(count), f'{received / local_batch:,.0f}',
           f'{received:,.0f}']
          for (direction, axis, layer, kind), (count, received) in grouped.items()]


def communication_report(ops, mesh, local_batch: int) -> str:
  if not ops:
    return (f'No collectives on mesh {dict(mesh.shape)}: each device runs whole towers on its '
            'own batch and no gradient needs summing.')
  header = ('pass', 'mesh axis', 'layer', 'collective', 'ops', 'bytes/image received',
            'bytes/step received')
  text = text_table(header, communication_rows(ops, local_batch))
  return (text + '\nBytes are what one device receives with ring algorithms; '
          f'per image = per step / {local_batch} (the per-device batch).')


def step_collectives(config: ModelConfig, mesh, global_batch: int,
                     lower_step) -> tuple[list[communication.Collective], int]:
  """(the collectives of the compiled training step, the per-device batch).

  lower_step(config, mesh, global_batch) -> jax Lowered.
  """
  compiled_text = lower_step(config, mesh, global_batch).compile().as_text()
  return (communication.collectives(compiled_text, mesh),
          global_batch // mesh.shape[parallel.DATA])


def run(config: ModelConfig, mesh, global_batch: int, lower_step) -> str:
  """Builds the whole summary. lower_step(config, mesh, global_batch) -> jax Lowered."""
  lines = [f'AlexNet, {config.towers} tower(s), {config.num_classes} classes, '
           f'{config.image_size}x{config.image_size} input, width x{config.width}', '',
           format_layer_table(config), '']
  ops, local_batch = step_collectives(config, mesh, global_batch, lower_step)
  lines += [f'Communication of the compiled training step, --parallelism={config.parallelism}, '
            f'on mesh {dict(mesh.shape)} ({jax.devices()[0].platform}, global batch '
            f'{global_batch}):',
            communication_report(ops, mesh, local_batch), '']
  rows = layer_rows(config)
  lines.append(f"Total multiply-adds: {sum(r['macs'] for r in rows):,}")
  lines.append(f"Total params: {sum(r['params'] for r in rows):,}")
  return '\n'.join(lines)
