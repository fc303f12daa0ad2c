"""Several processes as one JAX program: jax.distributed, barriers, the preemption save.

A multi-process run has one process per host (TPU VMs), per GPU (SLURM) or per slice
of the CPU (`launch.sh local --processes N`). `initialize` joins them through
`jax.distributed.initialize()` before any device is touched; afterwards `jax.devices()`
lists every process's devices, the mesh spans them, each process feeds the batch rows
of its own devices, and every collective crosses processes (gloo on the CPU).

A run starts jax.distributed when its flags name the processes (--coordinator_address,
--num_processes, --process_id), inside a SLURM job step of several tasks, or always
with --distributed=on (TPU VM pods: JAX reads the pod's workers from the VM).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Mapping

from absl import logging
import jax
from jax.experimental import multihost_utils

from alexnet_jax.config import ProcessConfig

# What a SLURM job step sets (the variables JAX's own SLURM detection reads).
_SLURM_STEP = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID')


def slurm_tasks(environ: Mapping[str, str]) -> int:
  """Tasks of the SLURM job step this process belongs to (0 outside one)."""
  if not all(name in environ for name in _SLURM_STEP):
    return 0
  return int(environ['SLURM_NTASKS'])


def should_start(config: ProcessConfig, environ: Mapping[str, str]) -> bool:
  if config.distributed != 'auto':
    return config.distributed == 'on'
  return config.explicit or slurm_tasks(environ) > 1


def initialize(config: ProcessConfig) -> None:
  """Starts jax.distributed if `config` and the environment ask for it.

  Must run before anything touches a device.
  """
  if not should_start(config, os.environ):
    return
  # Cross-process collectives of the CPU backend (the only one that needs telling).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      config.coordinator_address, config.num_processes, config.process_id,
      initialization_timeout=config.initialization_timeout,
      heartbeat_timeout_seconds=config.heartbeat_timeout)
  logging.info('Process %d of %d: %d of %d devices are local.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def barrier(name: str) -> None:
  """Waits until every process gets here (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def in_turn(name: str, fn: Callable[[], object]) -> None:
  """Runs fn on process 0, then on the others.

  For work that writes files (demo data, a prepared dataset): on a shared file system
  the others find it done; on per-host disks each host does its own.
  """
  if jax.process_index() == 0:
    fn()
  barrier(name)
  if jax.process_index() != 0:
    fn()


class Preemption:
  """Whether to save and stop before a step: a SIGTERM reached some process.

  With jax.distributed, JAX's preemption service catches SIGTERM on any process, tells
  the others, and agrees on one step that all of them reach: `reached(step)` is True at
  that step on every process, so all save the same checkpoint together. Alone, a
  SIGTERM handler sets a flag and `reached` is True before the next step.
  """

  def __init__(self):
    self._requested = False
    self._previous = None

  def __enter__(self):
    # With jax.distributed the service owns SIGTERM; a Python handler would replace it.
    if not jax.distributed.is_initialized() and (
        threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint after this step, then stopping.')
    self._requested = True

  def reached(self, step: int) -> bool:
    """Call before every step, with the same steps on every process."""
    if jax.distributed.is_initialized():
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
