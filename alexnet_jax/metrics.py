"""What a run reports: metrics.jsonl, TensorBoard event files, the progress line.

Only process 0 writes. metrics.jsonl has one JSON object per line; a resumed run appends,
so a step may appear twice (readers keep the last line of each step).
"""

from __future__ import annotations

import json
import math
import os
import time

from absl import logging
import jax


class MetricsWriter:
  """Appends metrics to WORKDIR/metrics.jsonl and to TensorBoard (tensorboardX)."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tensorboard = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        self._tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:
        logging.info('tensorboardX is not installed: no TensorBoard event files.')

  def write(self, step: int, **values) -> None:
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(dict(step=step, **values), sort_keys=True) + '\n')
    if self._tensorboard is not None:
      for name, value in values.items():
        if isinstance(value, (int, float)):
          self._tensorboard.add_scalar(name, value, step)

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def read_metrics(path: str) -> list[dict]:
  """The lines of a metrics.jsonl, last one winning where a resumed run repeated a step."""
  by_key = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        kind = 'eval' if 'top1' in record else 'train'
        by_key[(kind, record['step'])] = record
  return [by_key[key] for key in sorted(by_key, key=lambda k: (k[1], k[0]))]


class Progress:
  """The progress line: step, loss, images/s, ETA."""

  def __init__(self, total_steps: int, batch_size: int, first_step: int):
    self.total, self.batch = total_steps, batch_size
    self._time, self._step = time.time(), first_step

  def line(self, step: int, loss: float, learning_rate: float) -> tuple[str, float]:
    now = time.time()
    rate = (step - self._step) * self.batch / max(now - self._time, 1e-9)
    self._time, self._step = now, step
    eta = (self.total - step) * self.batch / rate if rate > 0 else math.inf
    return (f'step {step}/{self.total}  loss {loss:.4f}  lr {learning_rate:.3g}  '
            f'{rate:,.0f} img/s  ETA {_duration(eta)}'), rate


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'
