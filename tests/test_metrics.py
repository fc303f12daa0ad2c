"""What a run reports: the progress line's rate and ETA, metrics.jsonl torn by a kill."""

import json
import logging

import pytest

from alexnet_jax import metrics


class _Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_the_eta_comes_from_step_times_after_the_compile():
  clock = _Clock()
  progress = metrics.Progress(total_steps=1000, batch_size=32, eval_every=100, clock=clock)
  clock.now += 60.0                     # the first step: 60 s of compile, then 0.5 s
  progress.step_done(1)
  for step in range(2, 51):             # 49 more steps of 0.5 s each
    clock.now += 0.5
    progress.step_done(step)
  line, rate = progress.line(50, loss=2.0, learning_rate=0.01)
  assert rate == pytest.approx(49 * 32 / (49 * 0.5))
  assert line.endswith('ETA 7m55s')     # 950 steps x 0.5 s; no evaluation timed yet
  clock.now += 12.0                     # an evaluation (10 s) and a save's blocking part (2 s)
  progress.evaluated(10.0)
  progress.paused(2.0)
  clock.now += 50 * 0.5
  line, rate = progress.line(100, loss=1.9, learning_rate=0.01)
  assert rate == pytest.approx(50 * 32 / (50 * 0.5))  # the evaluation and save left out
  # 900 steps at 0.5 s, and 9 evaluations (200, ..., 1000) at the last one's 10 s.
  assert progress.evaluations_left(100) == 9
  assert line.endswith(f'ETA {(900 * 0.5 + 9 * 10) // 60:.0f}m00s')
  line, _ = progress.line(100, loss=1.9, learning_rate=0.01)
  assert 'img/s' not in line             # no step since the last line: nothing to time


def test_the_first_line_has_no_rate_when_only_the_compiling_step_is_done():
  clock = _Clock()
  progress = metrics.Progress(total_steps=10, batch_size=8, eval_every=5, clock=clock)
  clock.now += 75.0
  progress.step_done(1)
  line, rate = progress.line(1, loss=2.3, learning_rate=0.1)
  assert rate is None and line.endswith('first step, compile included: 1m15s')
  assert (progress.evaluations_left(1), progress.evaluations_left(7),
          progress.evaluations_left(10)) == (2, 1, 0)
  assert metrics.Progress(12, 8, 5).evaluations_left(3) == 3  # 5, 10 and the last, 12


def _lines(path):
  return path.read_text().splitlines()


def test_a_torn_last_line_is_cut_off_with_one_warning(tmp_path, caplog):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
  with caplog.at_level(logging.WARNING):
    metrics.drop_torn_line(str(path))
    metrics.drop_torn_line(str(path))   # nothing left to drop: no second warning
  assert _lines(path) == ['{"step": 1, "loss": 2.0}']
  [warning] = [r.getMessage() for r in caplog.records]
  assert str(path) in warning and '"step": 2, "lo' in warning


def test_readers_skip_lines_that_are_not_json_with_one_warning(tmp_path, caplog):
  path = tmp_path / 'metrics.jsonl'
  # A resumed run of old appended onto a torn line: the two records became one bad line.
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo{"step": 2, "loss": 1.5}\n'
                  '{"step": 3, "loss": 1.0}\n{"step": 4, "lo')
  with caplog.at_level(logging.WARNING):
    records = metrics.read_metrics(str(path))
  assert [r['step'] for r in records] == [1, 3]
  [warning] = [r.getMessage() for r in caplog.records]
  assert f'Skipped 2 line(s) of {path}' in warning and '(line 2, 4)' in warning


def test_epoch_and_crops_are_written_but_are_not_tensorboard_scalars(tmp_path):
  from tensorflow.python.summary import summary_iterator  # pylint: disable=import-outside-toplevel
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.write(3, loss=1.5, epoch=0.5)
  writer.write(3, top1=0.25, crops=10, epoch=0.5)
  writer.close()
  assert [json.loads(line) for line in _lines(tmp_path / 'metrics.jsonl')] == [
      {'step': 3, 'loss': 1.5, 'epoch': 0.5}, {'step': 3, 'top1': 0.25, 'crops': 10, 'epoch': 0.5}]
  [events] = (tmp_path / 'tensorboard').glob('events.out.tfevents.*')
  tags = {value.tag for event in summary_iterator.summary_iterator(str(events))
          for value in event.summary.value}
  assert tags == {'loss', 'top1'}
