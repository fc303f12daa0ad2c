"""Several processes as one JAX program: jax.distributed, barriers, the preemption save.

A multi-process run has one process per host (TPU VMs), per GPU (SLURM) or per slice
of the CPU (`launch.sh local --processes N`). `initialize` joins them through
`jax.distributed.initialize()` before any device is touched; afterwards `jax.devices()`
lists every process's devices, the mesh spans them, each process feeds the batch rows
of its own devices, and every collective crosses processes (gloo on the CPU).

A run starts jax.distributed when its flags name the processes (--coordinator_address,
--num_processes, --process_id), inside a SLURM job step of several tasks, or always
with --distributed=on (TPU VM pods: JAX reads the pod's workers from the VM).

A lost process. JAX's coordination service counts a process dead after
--heartbeat_timeout seconds without its heartbeat, and by default then ends every other
process with an abort (a C++ stack, status 134); a process whose service vanished (the
service runs in process 0) aborts at once. So with --coordination_service=separate
(launch.sh local) the service runs in a process of its own, `serve`, where losing a
process is not fatal to the others ("recoverable"), and each process watches the others
(`lost_processes_reported`): one that vanished without ending on its own (kill -9, a
crash, its host down) ends every survivor with one line naming it and where the run
resumes, within the heartbeat timeout and a poll. A process that ends on its own (done,
or stopped by an error it reports itself) says so first in the service's key-value store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable, Mapping, TypeVar

from absl import logging
import jax
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils

from alexnet_jax.config import ProcessConfig, UserError

T = TypeVar('T')

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


# A process that ends on its own sets this key (+ its id) before it leaves the service.
_ENDED = 'alexnet_jax/ended/'
POLL_SECONDS = 0.5  # how often each process asks the service which processes are alive


def initialize(config: ProcessConfig) -> None:
  """Starts jax.distributed if `config` and the environment ask for it.

  Must run before anything touches a device.
  """
  if not should_start(config, os.environ):
    return
  # Cross-process collectives of the CPU backend (the only one that needs telling).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  separate = config.coordination_service == 'separate'
  if separate:  # a lost process is not fatal to the others (newer jaxlibs ask each process)
    jax.config.update('jax_enable_recoverability', True)
  with _service_elsewhere() if separate else contextlib.nullcontext():
    jax.distributed.initialize(
        config.coordinator_address, config.num_processes, config.process_id,
        initialization_timeout=config.initialization_timeout,
        heartbeat_timeout_seconds=config.heartbeat_timeout)
  if separate:
    global _watch
    _watch = _Watch(jax_distributed.global_state.client, config.heartbeat_timeout)
    _watch.start()
  logging.info('Process %d of %d: %d of %d devices are local.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


class _NoService:
  def shutdown(self) -> None:
    pass


@contextlib.contextmanager
def _service_elsewhere():
  """jax.distributed.initialize without the service it would start in process 0."""
  jaxlib = jax_distributed._jax  # pylint: disable=protected-access
  start = jaxlib.get_distributed_runtime_service
  jaxlib.get_distributed_runtime_service = lambda *args, **kwargs: _NoService()
  try:
    yield
  finally:
    jaxlib.get_distributed_runtime_service = start


def serve(port: int, num_processes: int, heartbeat_timeout: int) -> None:
  """Runs the coordination service of `num_processes` processes on `port` (all addresses).

  Until SIGTERM (launch.sh sends it once every process has exited) or until the process
  that started this one is gone. Its log lines would only repeat what the processes say:
  stderr is dropped once the service runs, while a failure to start is one line.
  """
  parent = os.getppid()
  stderr = os.dup(2)
  with open(os.devnull, 'w') as devnull:
    os.dup2(devnull.fileno(), 2)
  start = jax_distributed._jax.get_distributed_runtime_service  # pylint: disable=protected-access
  try:  # the service lives as long as this object
    service = start(f'[::]:{port}', num_processes, heartbeat_timeout=heartbeat_timeout,
                    recoverable=True)
  except Exception as error:  # pylint: disable=broad-except
    os.write(stderr, f'alexnet_jax: error: the coordination service did not start on port '
                     f'{port}: {str(error).strip().splitlines()[0]}\n'.encode())
    sys.exit(1)
  while os.getppid() == parent:
    time.sleep(1)
  service.shutdown()


class ProcessStoppedError(UserError):
  """Another process of the run ended with an error of its own."""


def set_resume_note(note: Callable[[], str]) -> None:
  """What a survivor of a lost process adds: where the run resumes (checkpoints.py)."""
  global _resume_note
  _resume_note = note


_resume_note: Callable[[], str] = lambda: 'Run the same command again.'
_watch: _Watch | None = None


def _stop(message: str) -> None:
  """Ends this process at once with one line: a lost process leaves nothing to clean up that
  a survivor could finish (its collectives, saves and shutdown wait for the lost one)."""
  sys.stdout.flush()
  sys.stderr.write(f'alexnet_jax: error: {message}\n')
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


class _Watch(threading.Thread):
  """Asks the service every POLL_SECONDS which processes are alive; ends this process with one
  line when one vanished without ending on its own, whatever the main thread is doing."""

  def __init__(self, client, heartbeat_timeout: int):
    super().__init__(name='lost_processes', daemon=True)
    self.client, self.heartbeat_timeout = client, heartbeat_timeout
    self.me, self.processes = jax.process_index(), list(range(jax.process_count()))
    self.stopping = threading.Event()
    self.ended = set()             # processes that ended on their own
    self.found = threading.Event()  # set when one has

  def run(self) -> None:
    while not self.stopping.wait(POLL_SECONDS):
      try:
        # Waits for every process that is alive to ask too: the same answer for all.
        live = self.client.get_live_nodes(self.processes)
      except Exception:  # pylint: disable=broad-except
        return  # this process is shutting down, or the service is gone
      for process in sorted(set(self.processes) - set(live) - self.ended):
        if self.stopping.is_set():
          return
        if not self._ended_on_its_own(process):
          _stop(f'process {process} was lost: no heartbeat for {self.heartbeat_timeout} s '
                f'(killed, crashed, or its host is down). {_resume_note()}')
        self.ended.add(process)
        self.found.set()

  def _ended_on_its_own(self, process: int) -> bool:
    try:
      self.client.key_value_try_get(f'{_ENDED}{process}')
      return True
    except jax.errors.JaxRuntimeError:  # NOT_FOUND
      return False

  def end(self) -> None:
    """This process ends on its own: say so, and stop watching."""
    self.stopping.set()
    try:
      self.client.key_value_set(f'{_ENDED}{self.me}', 'ended', allow_overwrite=True)
    except jax.errors.JaxRuntimeError:
      pass  # the service is gone: nobody is left to tell


def _communication_failed(error: BaseException | None) -> bool:
  """Whether error's chain holds a runtime error: a collective or a barrier whose peer left."""
  while error is not None:
    if isinstance(error, jax.errors.JaxRuntimeError):
      return True
    error = error.__cause__ or error.__context__
  return False


@contextlib.contextmanager
def lost_processes_reported():
  """Around a run: a lost process ends this one with one line, not a traceback.

  An error that a lost process caused here (a collective or barrier without its peer)
  waits for the watch's verdict, at most twice the heartbeat timeout: a process lost is
  reported by the watch, one that ended with an error of its own as ProcessStoppedError.
  Anything else passes on as it is. Without a separate service there is no watch.
  """
  if _watch is None:
    yield
    return
  try:
    yield
  except BaseException as error:
    if _communication_failed(error) and _watch.found.wait(2 * _watch.heartbeat_timeout):
      process = min(_watch.ended)
      raise ProcessStoppedError(f'process {process} stopped (its own message says why). '
                                f'{_resume_note()}') from error
    raise
  finally:
    _watch.end()


def barrier(name: str) -> None:
  """Waits until every process gets here (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def in_turn(name: str, fn: Callable[[], T]) -> T:
  """Runs fn on process 0, then on the others; returns this process's result.

  For work that writes files (demo data, a prepared dataset): on a shared file system
  the others find it done; on per-host disks each host does its own.
  """
  result = fn() if jax.process_index() == 0 else None
  barrier(name)
  return result if jax.process_index() == 0 else fn()


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
