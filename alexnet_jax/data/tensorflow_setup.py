"""TensorFlow for the input pipeline, set up in one place: every data module takes it from here.

    from alexnet_jax.data.tensorflow_setup import tf, tfds

- Quiet. At import TensorFlow's C++ prints start-up notices to stderr that no
  TF_CPP_MIN_LOG_LEVEL hides (they come before its logging is set up): on CPUs where it
  turns oneDNN on by default (AVX-512 ones, or any x86 CPU with TF_ENABLE_ONEDNN_OPTS=1)
  "All log messages before absl::InitializeLog() ..." and "oneDNN custom operations are
  on ...", and the CPU features it was not built for. They are dropped; anything else
  written to stderr while TensorFlow loads is passed on. What TensorFlow computes is left
  as it is: oneDNN stays as TensorFlow (or the user's TF_ENABLE_ONEDNN_OPTS) has it.
- Its C++ INFO lines off (TF_CPP_MIN_LOG_LEVEL=1; its warnings and errors stay), unless the
  user set the level.
- Its own pool for host memory (BFC): TF's default CPU allocator hands large buffers back
  to the OS when they are freed, so every decoded square and every batch is faulted in
  afresh (docs/PERFORMANCE.md). The user's setting holds.
- No accelerator: tf.data never touches one; a full TensorFlow would grab its memory.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# Notices, not problems: what TensorFlow's C++ prints at import on a healthy machine.
_START_UP_NOTICE = re.compile(
    r'WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR'
    r'|I\d{4} \S+ +\d+ (port|cpu_feature_guard)\.cc:\d+\] '
    r'|To enable the following instructions: .* rebuild TensorFlow with the appropriate')


def _import_quietly(name: str):
  """Imports module `name` with its start-up notices on stderr (fd 2, C++ included) dropped."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:  # unnamed: nothing is left on disk
    os.dup2(captured.fileno(), 2)
    try:
      return __import__(name)
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors='replace').splitlines(keepends=True):
        if not _START_UP_NOTICE.match(line):
          sys.stderr.write(line)
      sys.stderr.flush()


os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')  # read at TF's first allocation
tf = _import_quietly('tensorflow')
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

__all__ = ['tf', 'tfds']

try:
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
except (RuntimeError, ValueError):
  pass  # TF already initialized its devices, or has no such device type
