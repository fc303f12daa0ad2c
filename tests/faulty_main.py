"""The entry point with a fault injected, as a full disk or a read-only mount would cause.

  python -m tests.faulty_main FAULT MAIN_FLAGS...

FAULT is one of
  enospc_from_step=N      the background commit of every checkpoint of step >= N fails as
                          TensorStore (orbax's writer) reports a full disk: a ValueError
                          whose text carries the errno (orbax finalizes a save in a thread)
  disk_full_after_step=N  once checkpoint N is complete, the disk of --workdir is full:
                          Python's writes into it fail with ENOSPC (metrics.jsonl, the
                          TensorBoard events, results, orbax's metadata), and so do the
                          commits of the checkpoints after N, as above. Another process
                          filled it; the kernel's own writes (the lock's truncation) go on
  erofs=DIR               every write, mkdir, rename or delete under DIR fails with EROFS, as
                          on a read-only mount (root ignores chmod, and mounts need privileges)
"""

import builtins
import errno
import os
import runpy
import sys


def _fail(code: int, path) -> None:
  raise OSError(code, os.strerror(code), os.fspath(path))


def _inside(directory: str):
  """Whether a path (not a file descriptor) lies in directory."""
  root = os.path.abspath(directory)

  def inside(path) -> bool:
    if isinstance(path, int):
      return False
    path = os.path.abspath(os.fsdecode(path))
    return path == root or path.startswith(root + os.sep)
  return inside


def enospc_from_step(step: int) -> None:
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
  commit = atomicity.on_commit_callback

  async def commit_or_fail(tmp_dir, **kwargs):
    if int(tmp_dir.get_final().name) >= step:
      # What TensorStore raised on a full tmpfs, in its words.
      raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "params.fc8.kernel/0.0" in OCDBT '
                       f'database at local file "{tmp_dir.get()}/state/ocdbt.process_0/": '
                       'Failed writing: "d/04bf3adb84fd66bec3f47d2451e57556": Failed to write '
                       "1216512 bytes to file 12: No space left on device [os_error_code='28']")
    return await commit(tmp_dir, **kwargs)

  atomicity.on_commit_callback = commit_or_fail


class _FileOnAFillingDisk:
  """A file whose writes fail with ENOSPC once full() (nothing is buffered after that)."""

  def __init__(self, file, full):
    self._file, self._full = file, full

  def write(self, data):
    if data and self._full():
      _fail(errno.ENOSPC, self._file.name)
    return self._file.write(data)

  def flush(self):
    if self._full():
      _fail(errno.ENOSPC, self._file.name)
    self._file.flush()

  def __getattr__(self, name):
    return getattr(self._file, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._file.close()


def disk_full_after_step(step: int, workdir: str) -> None:
  enospc_from_step(step + 1)
  inside = _inside(workdir)
  full = lambda: os.path.isdir(os.path.join(workdir, 'checkpoints', str(step)))
  real_open = builtins.open

  def open_(file, mode='r', *args, **kwargs):
    opened = real_open(file, mode, *args, **kwargs)
    if any(c in mode for c in 'wax+') and inside(file):
      return _FileOnAFillingDisk(opened, full)
    return opened

  builtins.open = open_


def erofs(directory: str) -> None:
  inside = _inside(directory)
  real_open, real_os_open = builtins.open, os.open

  def open_(file, mode='r', *args, **kwargs):
    if any(c in mode for c in 'wax+') and inside(file):
      _fail(errno.EROFS, file)
    return real_open(file, mode, *args, **kwargs)

  def os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
      _fail(errno.EROFS, path)
    return real_os_open(path, flags, *args, **kwargs)

  builtins.open, os.open = open_, os_open
  for name in ('mkdir', 'rename', 'replace', 'remove', 'unlink', 'rmdir'):
    def refuse_inside(path, *args, _real=getattr(os, name), **kwargs):
      if inside(path):
        _fail(errno.EROFS, path)
      return _real(path, *args, **kwargs)
    setattr(os, name, refuse_inside)


if __name__ == '__main__':
  fault, value = sys.argv[1].split('=', 1)
  workdir = [arg.split('=', 1)[1] for arg in sys.argv if arg.startswith('--workdir=')]
  {'enospc_from_step': lambda: enospc_from_step(int(value)),
   'disk_full_after_step': lambda: disk_full_after_step(int(value), workdir[-1]),
   'erofs': lambda: erofs(value)}[fault]()
  sys.argv = ['alexnet_jax.main', *sys.argv[2:]]
  runpy.run_module('alexnet_jax.main', run_name='__main__', alter_sys=True)
