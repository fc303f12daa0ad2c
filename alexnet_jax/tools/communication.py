"""Reads the collectives out of HLO text: which op, over which mesh axis, at which layer.

Works on the unoptimized HLO of a lowered function (`lowered.as_text(dialect='hlo',
debug_info=True)`) and on the compiled HLO (`compiled.as_text()`), where XLA may have
merged several collectives into one tuple-shaped op. Each op is attributed to a mesh
axis by its replica groups, in every form the supported JAX versions print (explicit
lists `{{0,1},{2,3}}`, iota `[2,2]<=[4]`, and from jax 0.12 the named mesh
`mesh['data'=2,'tower'=2] {'tower'}`; the partitioner of jit programs may name a mesh of
its own, `mesh['axis_0'=4,'axis_1'=1] {'axis_0'}`, read as device ids laid out on it), and
to a layer by the name scope in its metadata (`cross_into_<layer>` for the tower crossings,
`gather_into_<layer>` for the hybrid's gathers of what a fully-connected layer reads,
`parameters_of_<layer>` for fsdp's gathers of parameters, the Flax module name otherwise).
An op is backward when it comes from the gradient (`transpose(` in its name) or is a
reduce-scatter.
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
_EXPLICIT_GROUPS = re.compile(r'replica_groups=\{(?P<groups>(?:\{[\d,]*\},?)*)\}')
_IOTA_GROUPS = re.compile(
    r'replica_groups=\[(?P<shape>[\d,]+)\]<=\[(?P<dims>[\d,]+)\](?:T\((?P<perm>[\d,]+)\))?')
# jax >= 0.12: replica_groups=mesh['data'=2,'tower'=2] {'tower'} (sub-axes as 'data':(1)2).
_NAMED_GROUPS = re.compile(
    r"replica_groups=mesh\[(?P<mesh>[^\]]*)\](?:, device_ids=\((?:[^()]|\([^()]*\))*\))? \{(?P<axes>[^}]*)\}")
_NAMED_AXIS = re.compile(r"'?(?P<name>[^',=:\s]+)'?(?:=(?P<size>\d+)|:\((?P<pre>\d+)\)(?P<sub>\d+))?")
_OP_NAME = re.compile(r'op_name="(?P<name>[^"]*)"')
_CROSSING = re.compile(r'(?:cross|gather)_into_(?P<layer>\w+?)(?:/|$)')
_OWN_AXIS = re.compile(r'axis_\d+')  # the axes of a mesh XLA's partitioner names itself
_PARAMETERS = re.compile(r'parameters_of_(?P<layer>\w+?)(?:/|$)')
_MODULE = re.compile(r'AlexNet/(?P<layer>\w+?)(?:/|$)')

_BYTES = {'pred': 1, 'bf16': 2}
# The axis of a collective whose replica groups this reader cannot read: never guessed.
UNATTRIBUTED = 'unattributed'


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str              # 'all-gather', 'all-reduce', ...
  axis: str              # mesh axis name, 'data+tower' when groups span both, or UNATTRIBUTED
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


def _listed_groups(text: str, num_devices: int) -> list[list[int]] | None:
  """Replica groups written as device ids (positions in the mesh): explicit or iota."""
  explicit = _EXPLICIT_GROUPS.search(text)
  if explicit:
    groups = [[int(i) for i in group.split(',') if i]
              for group in re.findall(r'\{([\d,]*)\}', explicit['groups'])]
    return groups or [list(range(num_devices))]  # replica_groups={}: every device
  iota = _IOTA_GROUPS.search(text)
  if iota:
    shape = [int(d) for d in iota['shape'].split(',')]
    dims = [int(d) for d in iota['dims'].split(',')]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if iota['perm']:
      ids = ids.transpose([int(p) for p in iota['perm'].split(',')])
    return ids.reshape(shape).tolist()
  return None


def _varying_axes(groups: list[list[int]], mesh) -> tuple[set[str], int]:
  """(mesh axes along which the members of a replica group differ, group size)."""
  mesh_shape = tuple(mesh.devices.shape)
  varying = set()
  for group in groups:
    coords = np.array([np.unravel_index(i, mesh_shape) for i in group])
    varying |= {mesh.axis_names[a] for a in range(len(mesh_shape))
                if len(set(coords[:, a])) > 1}
  return varying, len(groups[0])


def _named_axes(match: re.Match, mesh) -> tuple[set[str], int] | None:
  """(axes, group size) of the named-mesh form, None if it names axes `mesh` lacks."""
  sizes = {axis['name']: int(axis['size'])
           for axis in _NAMED_AXIS.finditer(match['mesh']) if axis['size']}
  axes, group_size = set(), 1
  for axis in _NAMED_AXIS.finditer(match['axes']):
    if axis['name'] not in mesh.axis_names or axis['name'] not in sizes:
      return _own_mesh_axes(match, mesh) if all(map(_OWN_AXIS.fullmatch, sizes)) else None
    axes.add(axis['name'])
    group_size *= int(axis['sub']) if axis['sub'] else sizes[axis['name']]
  return axes, group_size


def _own_mesh_axes(match: re.Match, mesh) -> tuple[set[str], int] | None:
  """(axes, group size) of a mesh of the partitioner's own (axes axis_0, axis_1, ...):
  device ids 0..n-1 (or its device_ids) laid out on it, a group for each position of the
  axes it does not name. None for sub-axes or device ids in another form."""
  sizes = {axis['name']: int(axis['size'])
           for axis in _NAMED_AXIS.finditer(match['mesh']) if axis['size']}
  named = [axis for axis in _NAMED_AXIS.finditer(match['axes'])]
  if any(axis['sub'] or axis['name'] not in sizes for axis in named):
    return None
  ids = np.arange(math.prod(sizes.values()))
  listed = re.search(r'device_ids=\((?P<ids>(?:[^()]|\([^()]*\))*)\)', match[0])
  if listed:
    groups = _listed_groups(f'replica_groups={listed["ids"]}', ids.size)
    if groups is None:
      return None
    ids = np.array(groups).reshape(-1)
  order = list(sizes)
  inside = [order.index(axis['name']) for axis in named]
  outside = [a for a in range(len(order)) if a not in inside]
  ids = ids.reshape(list(sizes.values())).transpose(outside + inside)
  group_size = math.prod(sizes[axis['name']] for axis in named)
  return _varying_axes(ids.reshape(-1, group_size).tolist(), mesh)


def group_axes(line: str, mesh) -> tuple[str, int]:
  """(mesh axes the op's replica groups span, joined by '+', group size) of one HLO line.

  The axes are 'none' for groups of one device, and UNATTRIBUTED where the groups are
  missing or in a form this reader does not know (the group size is then the whole
  mesh, the most it could span).
  """
  named = _NAMED_GROUPS.search(line)
  if named:
    found = _named_axes(named, mesh)
  else:
    groups = _listed_groups(line, mesh.devices.size) if 'replica_groups=' in line else None
    found = _varying_axes(groups, mesh) if groups else None
  if found is None:
    return UNATTRIBUTED, mesh.devices.size
  varying, group_size = found
  if group_size == 1:
    return 'none', 1
  return '+'.join(name for name in mesh.axis_names if name in varying) or 'none', group_size


def collectives(hlo_text: str, mesh) -> list[Collective]:
  """Every collective in the HLO text, with replica-group ids read as positions in `mesh`."""
  found = []
  for line in hlo_text.splitlines():
    match = _OP.search(line)
    if not match or '-done(' in line:
      continue
    axis, group_size = group_axes(line, mesh)
    if group_size == 1:
      continue  # a group of one device exchanges nothing (e.g. a data axis of size 1)
    name_match = _OP_NAME.search(line)
    op_name = name_match['name'] if name_match else ''
    scope = _CROSSING.search(op_name) or _PARAMETERS.search(op_name)
    module = _MODULE.search(op_name)
    if scope:
      layer = scope['layer']
    elif ':' in op_name:
      layer = 'several'  # XLA merged the reductions of several layers into one op
    else:
      layer = module['layer'] if module else '?'
    backward = 'transpose(' in op_name or match['kind'] == 'reduce-scatter'
    found.append(Collective(
        kind=match['kind'],
        axis=axis,
        layer=layer,
        direction='backward' if backward else 'forward',
        result_bytes=_array_bytes(match['shape']),
        group_size=group_size))
  return found
