"""What the towers exchange at each crossing, in bytes per image, read from the compiled step.

The same route as --mode=summary: compile the training step on a mesh, read its
collectives out of the HLO (`communication.collectives`) and divide what one device
receives by its batch. Only collectives over the 'tower' axis are crossings.
"""

from __future__ import annotations

import dataclasses

from alexnet_jax import communication
from alexnet_jax import model as model_lib
from alexnet_jax import parallel


@dataclasses.dataclass(frozen=True)
class Exchange:
  """The tower collectives of one crossing in one pass."""
  kind: str                 # 'all-gather', 'all-reduce', 'reduce-scatter'
  bytes_per_image: float    # what one device receives per image


@dataclasses.dataclass(frozen=True)
class CompiledTraffic:
  ops: list[communication.Collective]   # every collective of the compiled step
  local_batch: int                      # images per device per step
  crossings: dict[tuple[str, str], Exchange]  # (layer, 'forward' | 'backward') -> exchange


def compiled_traffic(config: model_lib.ModelConfig, mesh, global_batch: int,
                     lower_step) -> CompiledTraffic:
  """Compiles lower_step(config, mesh, global_batch) and sums its tower collectives per crossing."""
  compiled_text = lower_step(config, mesh, global_batch).compile().as_text()
  ops = communication.collectives(compiled_text, mesh)
  local_batch = global_batch // mesh.shape[parallel.DATA]
  received, kinds = {}, {}
  for op in ops:
    if op.axis != parallel.TOWER:
      continue
    key = (op.layer, op.direction)
    received[key] = received.get(key, 0.0) + op.received_bytes
    kinds.setdefault(key, set()).add(op.kind)
  crossings = {key: Exchange('+'.join(sorted(kinds[key])), total / local_batch)
               for key, total in received.items()}
  return CompiledTraffic(ops, local_batch, crossings)
