"""Reads the collectives out of HLO text: which op, over which mesh axis, at which layer.

Works on the unoptimized HLO of a lowered function (`lowered.as_text(dialect='hlo',
debug_info=True)`) and on the compiled HLO (`compiled.as_text()`), where XLA may have
merged several collectives into one tuple-shaped op. Each op is attributed to a mesh
axis by its replica groups and to a layer by the name scope in its metadata
(`cross_into_<layer>` for the tower crossings, the Flax module name otherwise).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'collective-permute', 'all-to-all')

_OP = re.compile(
    r'=\s*(?P<shape>.+?)\s+(?P<kind>' + '|'.join(COLLECTIVES) + r')(?:-start)?\((?P<rest>.*)$')
_ARRAY = re.compile(r'\b(?P<dtype>pred|[fsu]\d+|bf16)\[(?P<dims>[\d,]*)\]')
_EXPLICIT_GROUPS = re.compile(r'replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}')
_IOTA_GROUPS = re.compile(r'replica_groups=\[(?P<shape>[\d,]+)\]<=\[(?P<dims>[\d,]+)\](?:T\((?P<perm>[\d,]+)\))?')
_OP_NAME = re.compile(r'op_name="(?P<name>[^"]*)"')
_CROSSING = re.compile(r'cross_into_(?P<layer>\w+?)(?:/|$)')
_MODULE = re.compile(r'AlexNet/(?P<layer>\w+?)(?:/|$)')

_BYTES = {'pred': 1, 'bf16': 2}


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str              # 'all-gather', 'all-reduce', ...
  axis: str              # mesh axis name, or 'data+tower' when groups span both
  layer: str             # crossing layer, or the layer whose gradient is reduced
  direction: str         # 'forward' or 'backward'
  result_bytes: int      # bytes of the op's result(s) on one device
  group_size: int

  @property
  def received_bytes(self) -> float:
    """Bytes one device receives, with ring algorithms (what a network carries)."""
    share = (self.group_size - 1) / self.group_size
    if self.kind == 'all-reduce':
      return 2 * share * self.result_bytes
    if self.kind == 'reduce-scatter':
      return share * self.result_bytes * self.group_size  # the operand is group_size x result
    return share * self.result_bytes


def _array_bytes(shape_text: str) -> int:
  total = 0
  for match in _ARRAY.finditer(shape_text):
    dims = [int(d) for d in match['dims'].split(',') if d]
    dtype = match['dtype']
    total += math.prod(dims) * _BYTES.get(dtype, int(dtype[1:]) // 8 if dtype[1:].isdigit() else 4)
  return total


def _replica_groups(text: str) -> list[list[int]]:
  explicit = _EXPLICIT_GROUPS.search(text)
  if explicit:
    return [[int(i) for i in group.split(',') if i]
            for group in re.findall(r'\{([\d,]*)\}', explicit[1])]
  iota = _IOTA_GROUPS.search(text)
  if iota:
    shape = [int(d) for d in iota['shape'].split(',')]
    dims = [int(d) for d in iota['dims'].split(',')]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if iota['perm']:
      ids = ids.transpose([int(p) for p in iota['perm'].split(',')])
    return ids.reshape(shape).tolist()
  return []


def _axis_of(groups: list[list[int]], mesh_shape: tuple[int, ...], axis_names) -> str:
  """The mesh axes along which the members of a replica group differ."""
  varying = set()
  for group in groups:
    coords = np.array([np.unravel_index(i, mesh_shape) for i in group])
    varying |= {axis_names[a] for a in range(len(mesh_shape)) if len(set(coords[:, a])) > 1}
  return '+'.join(name for name in axis_names if name in varying) or 'none'


def collectives(hlo_text: str, mesh) -> list[Collective]:
  """Every collective in the HLO text, with replica-group ids read as positions in `mesh`."""
  mesh_shape = tuple(mesh.devices.shape)
  found = []
  for line in hlo_text.splitlines():
    match = _OP.search(line)
    if not match or '-done(' in line:
      continue
    groups = _replica_groups(line)
    if groups and len(groups[0]) == 1:
      continue  # a group of one device exchanges nothing (e.g. a data axis of size 1)
    name_match = _OP_NAME.search(line)
    op_name = name_match['name'] if name_match else ''
    crossing = _CROSSING.search(op_name)
    module = _MODULE.search(op_name)
    if crossing:
      layer = crossing['layer']
    elif match['shape'].startswith('('):
      layer = 'several'  # XLA merged the reductions of several layers into one op
    else:
      layer = module['layer'] if module else '?'
    backward = 'transpose(' in op_name or match['kind'] == 'reduce-scatter' or not crossing
    found.append(Collective(
        kind=match['kind'],
        axis=_axis_of(groups, mesh_shape, mesh.axis_names) if groups else 'all',
        layer=layer,
        direction='backward' if backward else 'forward',
        result_bytes=_array_bytes(match['shape']),
        group_size=len(groups[0]) if groups else math.prod(mesh_shape)))
  return found
