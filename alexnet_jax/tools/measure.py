"""What the benchmarks measure with: a window's wall and CPU time, other processes' load, the host.

Both benchmarks (benchmark.py: the training step; input_benchmark.py: the input pipeline)
time windows with `timed`, which also counts the CPU-seconds of this process (all its
threads) and the share of the machine other processes used meanwhile: on a shared machine
the work per CPU-second holds where the wall time does not.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Callable, TypeVar

T = TypeVar('T')


@dataclasses.dataclass(frozen=True)
class Timing:
  wall: float               # seconds
  cpu: float                # CPU-seconds of this process, every thread counted
  others: float             # share of the machine's CPUs other processes used meanwhile


def busy_cpu_seconds() -> float:
  """CPU-seconds every process on the machine has spent busy since boot (/proc/stat)."""
  with open('/proc/stat') as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  return (sum(fields) - fields[3] - fields[4]) / os.sysconf('SC_CLK_TCK')  # less idle, iowait


def timed(work: Callable[[], T]) -> tuple[T, Timing]:
  """(work(), how long it took in wall and CPU time, and how busy the others were)."""
  busy, wall, cpu = busy_cpu_seconds(), time.perf_counter(), time.process_time()
  result = work()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  # /proc/stat counts in 10 ms ticks: shorter windows say nothing of the others.
  others = (busy_cpu_seconds() - busy - cpu) / (wall * os.cpu_count()) if wall >= 0.5 else 0.0
  return result, Timing(wall, cpu, max(0.0, others))


def wait_until_quiet(threshold: float, max_wait: float) -> None:
  """Waits (at most max_wait s) until the CPUs are less busy than `threshold` for 1 s."""
  deadline = time.monotonic() + max_wait
  while time.monotonic() < deadline:
    before = busy_cpu_seconds()
    time.sleep(1)
    if (busy_cpu_seconds() - before) / os.cpu_count() <= threshold:
      return


def cpu_model() -> str:
  """The host CPU's model name (Linux's /proc/cpuinfo, else what platform knows)."""
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  return platform.processor()


def cores() -> int:
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0))
