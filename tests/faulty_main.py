"""The entry point with a fault injected, as a full disk or a read-only mount would cause.

  python -m tests.faulty_main FAULT MAIN_FLAGS...

FAULT is one of
  enospc_from_step=N   the background commit of every checkpoint of step >= N fails with
                       ENOSPC, as on a full disk (orbax finalizes a save in a thread)
  erofs=DIR            every write, mkdir, rename or delete under DIR fails with EROFS, as
                       on a read-only mount (root ignores chmod, and mounts need privileges)
"""

import builtins
import errno
import os
import runpy
import sys


def _fail(code: int, path) -> None:
  raise OSError(code, os.strerror(code), os.fspath(path))


def enospc_from_step(step: int) -> None:
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
  commit = atomicity.on_commit_callback

  async def commit_or_fail(tmp_dir, **kwargs):
    if int(tmp_dir.get_final().name) >= step:
      _fail(errno.ENOSPC, tmp_dir.get())
    return await commit(tmp_dir, **kwargs)

  atomicity.on_commit_callback = commit_or_fail


def erofs(directory: str) -> None:
  root = os.path.abspath(directory)

  def inside(path) -> bool:
    if isinstance(path, int):
      return False  # a file descriptor
    path = os.path.abspath(os.fsdecode(path))
    return path == root or path.startswith(root + os.sep)

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
  {'enospc_from_step': lambda: enospc_from_step(int(value)),
   'erofs': lambda: erofs(value)}[fault]()
  sys.argv = ['alexnet_jax.main', *sys.argv[2:]]
  runpy.run_module('alexnet_jax.main', run_name='__main__', alter_sys=True)
