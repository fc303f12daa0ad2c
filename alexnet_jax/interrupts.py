"""Ctrl-C, the moment it arrives: one line and exit 130, or, in training, a checkpoint first.

Python runs signal handlers only between bytecodes of the main thread, which can sit in
an import, one compile or one device wait for minutes; and a KeyboardInterrupt raised in
whatever Python code runs then (a garbage-collection callback, a library's thread pool)
prints tracebacks of its own. So no handler raises: signal.set_wakeup_fd has the
interpreter's C-level handler write each signal's number to a pipe the moment it arrives,
and one thread reading the pipe reacts at once:

- by default (stop_at_once_on_ctrl_c, from the entry point's first line), it prints
  "alexnet_jax: stopped by Ctrl-C." and ends the process with status 130. Nothing a run
  writes is left half-done by that: checkpoints and results are renamed into place whole.
- inside CtrlC (a training), the first Ctrl-C asks for a checkpoint and a clean stop (the
  loop saves before its next step); a second exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

from absl import logging

# Exit status of a run stopped at once (the shell's for SIGINT).
STOPPED_AT_ONCE = 128 + signal.SIGINT


def _exit_at_once(message: str) -> None:
  sys.stderr.write(f'alexnet_jax: {message}\n')
  sys.stderr.flush()
  os._exit(STOPPED_AT_ONCE)  # pylint: disable=protected-access


class _Listener:
  """The thread that hears Ctrl-C; `react` says what to do about it."""

  def __init__(self, react: Callable[[], None]):
    self.react = react
    self._pipe = os.pipe()
    os.set_blocking(self._pipe[1], False)
    self._previous_fd = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # the thread below acts
    threading.Thread(target=self._watch, name='ctrl_c', daemon=True).start()

  def _watch(self) -> None:
    while received := os.read(self._pipe[0], 64):  # b'': close() closed the pipe
      for signum in received:
        if signum == signal.SIGINT:  # the wakeup fd reports every signal; SIGTERM has its own
          self.react()
    os.close(self._pipe[0])

  def close(self) -> None:
    """Ctrl-C raises KeyboardInterrupt again."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(self._previous_fd)
    os.close(self._pipe[1])  # the thread reads end-of-file and returns


_listener: _Listener | None = None  # the process's, from stop_at_once_on_ctrl_c


def _may_listen() -> bool:
  """In the main thread of a process whose Ctrl-C would raise KeyboardInterrupt: a run
  started in the background, with SIGINT ignored, stays as it was."""
  return (threading.current_thread() is threading.main_thread()
          and signal.getsignal(signal.SIGINT) is signal.default_int_handler)


def stop_at_once_on_ctrl_c() -> None:
  """From now on, Ctrl-C prints one line and exits with status 130, at once."""
  global _listener
  if _listener is None and _may_listen():
    _listener = _Listener(lambda: _exit_at_once('stopped by Ctrl-C.'))


class CtrlC:
  """Context manager; `requested` turns True at the first Ctrl-C, a second exits at once.

  Active only if enabled, where Ctrl-C may be heard (_may_listen); after it, Ctrl-C does
  what it did before (stops at once under the entry point).
  """

  def __init__(self, enabled: bool = True):
    self.requested = False
    self._enabled = enabled
    self._listener, self._previous, self._own = None, None, False

  def __enter__(self):
    if not self._enabled:
      return self
    if _listener is not None:
      self._listener, self._previous = _listener, _listener.react
      _listener.react = self._react
    elif _may_listen():  # no entry point set one up (the library used on its own)
      self._listener, self._own = _Listener(self._react), True
    return self

  def _react(self) -> None:
    if self.requested:
      _exit_at_once('stopped at once by a second Ctrl-C; the steps after the last checkpoint '
                    'are lost.')
    self.requested = True
    logging.warning('Ctrl-C: saving a checkpoint after this step, then stopping '
                    '(Ctrl-C again to stop at once, without saving).')

  def __exit__(self, *exc):
    if self._own:
      self._listener.close()
    elif self._listener is not None:
      self._listener.react = self._previous
