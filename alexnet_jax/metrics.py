"""What a run reports: metrics.jsonl, TensorBoard event files, the progress line.

Only process 0 writes. metrics.jsonl has one JSON object per line; a resumed run appends,
so a step may appear twice (readers keep the last line of each step). A run killed while
writing can leave a partial last line: the next run cuts it off before appending, and
readers skip any line that is not JSON, each with one warning naming the file.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Callable

from absl import logging
import jax


# Written to metrics.jsonl but not TensorBoard scalars: the x axis, and a setting.
NOT_SCALARS = ('epoch', 'crops')


class MetricsWriter:
  """Appends metrics to WORKDIR/metrics.jsonl and to a TensorBoard event file (tensorboardX).

  Events are written here, in the training loop's thread, flushed every FLUSH_SECONDS and
  at close: a write that fails (a full disk) raises its OSError in the loop, and the file
  is closed even then. tensorboardX's SummaryWriter writes from a thread of its own, which a
  failed write ends with a traceback, after which the loop blocks on its full queue; and its
  close leaves the file open when the flush fails, for the interpreter to fail again at exit.
  """

  FLUSH_SECONDS = 60

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._events, self._flushed = None, time.time()
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      drop_torn_line(self.path)
      try:
        from tensorboardX import record_writer  # pylint: disable=import-outside-toplevel
      except ImportError:
        logging.info('tensorboardX is not installed: no TensorBoard event files.')
        return
      directory = os.path.join(workdir, 'tensorboard')
      os.makedirs(directory, exist_ok=True)
      # SummaryWriter's name and first event.
      self._events = record_writer.RecordWriter(os.path.join(
          directory, f'events.out.tfevents.{time.time():.0f}.{socket.gethostname()}'))
      self._write_event(file_version='brain.Event:2')

  def _write_event(self, **fields) -> None:
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
    self._events.write(event_pb2.Event(wall_time=time.time(), **fields).SerializeToString())

  def write(self, step: int, **values) -> None:
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(dict(step=step, **values), sort_keys=True) + '\n')
    if self._events is None:
      return
    from tensorboardX import summary  # pylint: disable=import-outside-toplevel
    for name, value in values.items():
      if isinstance(value, (int, float)) and name not in NOT_SCALARS:
        self._write_event(step=step, summary=summary.scalar(name, value))
    if time.time() - self._flushed > self.FLUSH_SECONDS:
      self._events.flush()
      self._flushed = time.time()

  def close(self) -> None:
    if self._events is not None:
      events, self._events = self._events, None
      events.close()  # flushes, and closes the file even when the flush fails


def drop_torn_line(path: str) -> None:
  """Cuts off a last line without its newline (a run killed mid-write), with one warning."""
  if not os.path.exists(path):
    return
  with open(path, 'rb+') as f:
    data = f.read()  # a few MB at most: one short line per logged step
    if not data or data.endswith(b'\n'):
      return
    keep = data.rfind(b'\n') + 1
    f.truncate(keep)
  torn = data[keep:]
  logging.warning('%s ended in a partial line, left by a run that was killed while writing '
                  'it: dropped %r.', path, torn[:80].decode(errors='replace'))


def read_metrics(path: str) -> list[dict]:
  """The lines of a metrics.jsonl, last one winning where a resumed run repeated a step.

  Lines that are not JSON (torn by a kill) are skipped, with one warning for the file.
  """
  by_key, skipped = {}, []
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        skipped.append(number)
        continue
      kind = 'eval' if 'top1' in record else 'train'
      by_key[(kind, record['step'])] = record
  if skipped:
    logging.warning('Skipped %d line(s) of %s that are not JSON (line %s): a run killed while '
                    'writing leaves one.', len(skipped), path, ', '.join(map(str, skipped[:5])))
  return [by_key[key] for key in sorted(by_key, key=lambda k: (k[1], k[0]))]


class Progress:
  """The progress line: step, loss, images/s, ETA, timed from the end of the first step.

  The first step includes the compile, and evaluations and saves are timed apart: the
  rate counts training steps only, and the ETA adds the evaluations still to come at the
  duration of the last one.
  """

  def __init__(self, total_steps: int, batch_size: int, eval_every: int,
               clock: Callable[[], float] = time.time):
    self.total, self.batch, self.eval_every = total_steps, batch_size, eval_every
    self._clock = clock
    self._started = clock()
    self._mark = None          # (time, steps done) where the current window starts
    self._excluded = 0.0       # seconds of evaluations and saves inside the window
    self._eval_seconds = 0.0   # the last evaluation's

  def step_done(self, step: int) -> None:
    """Call when `step` steps are done; the first call ends the compile."""
    if self._mark is None:
      self._mark = (self._clock(), step)

  def evaluated(self, seconds: float) -> None:
    self._excluded += seconds
    self._eval_seconds = seconds

  def paused(self, seconds: float) -> None:
    """Time outside the training steps (a save's blocking part) the rate leaves out."""
    self._excluded += seconds

  def evaluations_left(self, step: int) -> int:
    """Evaluations after `step`: every eval_every steps and at the last step."""
    if step >= self.total:
      return 0
    return self.total // self.eval_every - step // self.eval_every + bool(
        self.total % self.eval_every)

  def line(self, step: int, loss: float, learning_rate: float) -> tuple[str, float | None]:
    """The line for `step` steps done, and the images/s since the last line (None at first)."""
    now = self._clock()
    head = f'step {step}/{self.total}  loss {loss:.4f}  lr {learning_rate:.3g}'
    if self._mark is None or self._mark[1] >= step:
      text, rate = f'{head}  first step, compile included: {_duration(now - self._started)}', None
    else:
      mark_time, mark_step = self._mark
      rate = (step - mark_step) * self.batch / max(now - mark_time - self._excluded, 1e-9)
      eta = ((self.total - step) * self.batch / rate
             + self.evaluations_left(step) * self._eval_seconds)
      text = f'{head}  {rate:,.0f} img/s  ETA {_duration(eta)}'
    self._mark, self._excluded = (now, step), 0.0
    return text, rate


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'
