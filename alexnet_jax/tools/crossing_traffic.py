"""What the towers exchange at each crossing, in bytes per image, read from the compiled step.

The same route as --mode=summary (`summary.step_collectives`): the collectives of the
compiled training step, what one device receives divided by its batch. Only collectives
over the 'tower' axis are crossings.
"""

from __future__ import annotations

import dataclasses

from alexnet_jax import parallel
from alexnet_jax.config import ModelConfig
from alexnet_jax.tools import communication
from alexnet_jax.tools import summary


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


def compiled_traffic(config: ModelConfig, mesh, global_batch: int,
                     lower_step) -> CompiledTraffic:
  """Compiles lower_step(config, mesh, global_batch) and sums its tower collectives per crossing."""
  ops, local_batch = summary.step_collectives(config, mesh, global_batch, lower_step)
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
