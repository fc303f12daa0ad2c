"""One training per workdir: WORKDIR/lock, held by a POSIX lock, naming its holder.

The lock is fcntl.lockf on the file (NFS forwards it to the server), so it dies with its
process, kill -9 included: a lock left by a killed run is simply free, and the holder it
still names is reported as taken over. The file holds the holder's process id, host and
start time, read by a second run to say who holds it. It is never deleted (deleting a
lock file lets two runs lock two different files); a clean exit empties it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from typing import Iterator

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from alexnet_jax.config import UserError

LOCK_FILE = 'lock'


class WorkdirInUseError(UserError):
  """Another training holds the workdir."""


def _holder(text: str) -> str:
  try:
    holder = json.loads(text)
    return (f"process {holder['pid']} on host {holder['host']} (since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['started']))})")
  except (ValueError, KeyError, TypeError):
    return 'a process that is starting'  # it has the lock but has not written itself yet


class WorkdirLock:
  """Context manager: the workdir is ours inside it, or WorkdirInUseError at once."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def __enter__(self):
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      text = os.pread(fd, 4096, 0).decode(errors='replace')
      os.close(fd)
      if error.errno not in (errno.EACCES, errno.EAGAIN):
        raise
      raise WorkdirInUseError(
          f'--workdir={self.workdir} is in use by the training of {_holder(text)} ({self.path}). '
          'Wait for it to finish, stop it, or use another --workdir.') from None
    left = os.pread(fd, 4096, 0).decode(errors='replace')
    if left.strip():
      logging.warning('Took over %s from %s, which is no longer running.', self.path,
                      _holder(left))
    me = json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, me.encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def __exit__(self, *exc):
    os.ftruncate(self._fd, 0)
    os.close(self._fd)  # releases the lock


@contextlib.contextmanager
def held_by_process_0(workdir: str) -> Iterator[None]:
  """The workdir's lock for a run of one or more processes: process 0 takes it.

  If it is in use, every process stops at once (the others learn it from process 0).
  """
  with contextlib.ExitStack() as stack:
    in_use = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(WorkdirLock(workdir))
      except WorkdirInUseError as error:
        in_use = error
    if jax.process_count() > 1:
      free = bool(multihost_utils.broadcast_one_to_all(np.int32(in_use is None)))
      if not free and in_use is None:
        in_use = WorkdirInUseError(f'--workdir={workdir} is in use by another training '
                                   '(process 0 names it).')
    if in_use is not None:
      raise in_use
    yield
