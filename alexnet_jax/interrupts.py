"""Ctrl-C during training: the first asks for a checkpoint and a clean stop, a second exits.

Python runs signal handlers only between bytecodes of the main thread, which can sit in
one compile or one device wait for minutes. So the handler does nothing itself:
signal.set_wakeup_fd has the interpreter's C-level handler write each signal's number to
a pipe the moment it arrives, and a thread reading the pipe reacts at once: it flags the
stop (the loop saves before its next step) or, on a second Ctrl-C, exits immediately.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from absl import logging

# Exit status of a run stopped by a second Ctrl-C (the shell's for SIGINT).
STOPPED_AT_ONCE = 128 + signal.SIGINT


class CtrlC:
  """Context manager; `requested` turns True at the first Ctrl-C.

  Active only if enabled, in the main thread of a process whose Ctrl-C would raise
  KeyboardInterrupt: a run started in the background (SIGINT ignored) stays as it was.
  """

  def __init__(self, enabled: bool = True):
    self.requested = False
    self._enabled = enabled
    self._pipe = None

  def __enter__(self):
    if (not self._enabled or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
      return self
    self._pipe = os.pipe()
    os.set_blocking(self._pipe[1], False)
    self._previous_fd = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # the thread below acts
    threading.Thread(target=self._watch, name='ctrl_c', daemon=True).start()
    return self

  def _watch(self) -> None:
    while True:
      received = os.read(self._pipe[0], 64)
      if not received:  # __exit__ closed the pipe
        os.close(self._pipe[0])
        return
      for signum in received:
        if signum != signal.SIGINT:
          continue  # the wakeup fd reports every signal; SIGTERM has its own handler
        if self.requested:
          sys.stderr.write('alexnet_jax: stopped at once by a second Ctrl-C; the steps after '
                           'the last checkpoint are lost.\n')
          sys.stderr.flush()
          os._exit(STOPPED_AT_ONCE)  # pylint: disable=protected-access
        self.requested = True
        logging.warning('Ctrl-C: saving a checkpoint after this step, then stopping '
                        '(Ctrl-C again to stop at once, without saving).')

  def __exit__(self, *exc):
    if self._pipe is not None:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      signal.set_wakeup_fd(self._previous_fd)
      os.close(self._pipe[1])  # the thread reads end-of-file and returns
