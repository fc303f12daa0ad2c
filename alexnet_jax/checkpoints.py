"""Orbax checkpoints of the train state: save, auto-resume, restore onto another mesh.

Layout: WORKDIR/checkpoints/<step>/{state, config}. `state` is the whole train state
(parameters, optimizer and schedule state, step); the step also fixes the dropout keys
and the input position, so a resumed run continues exactly. `config` is the JSON of the
settings that decide the parameters' shapes, checked before anything is restored.

Saves are asynchronous; the newest `keep` and the best by eval top-1 are kept. A newest
checkpoint that cannot be read (half-written, truncated) is moved to WORKDIR/corrupt/
and the next older one is used: nothing is deleted.
"""

from __future__ import annotations

import os
import shutil
import time

from absl import logging
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from alexnet_jax import distributed

# Settings that change the parameters' shapes: a checkpoint only fits the same ones.
SHAPE_FIELDS = ('towers', 'num_classes', 'image_size', 'width', 'crossings')
# Orbax warns so at every save without metrics once best_fn is set; most saves have none.
_NO_METRICS_WARNING = 'Requested `tracked_metric`; did not provide metrics.'
logging.get_absl_logger().addFilter(lambda record: record.getMessage() != _NO_METRICS_WARNING)


def _top1(metrics: dict) -> float:
  return metrics['top1']


class CheckpointMismatchError(ValueError):
  """The checkpoint was written by a model of another configuration."""


class NoCheckpointError(FileNotFoundError):
  """There is no readable checkpoint where one is needed."""


def _same(a, b) -> bool:
  return (list(a) if isinstance(a, (list, tuple)) else a) == (
      list(b) if isinstance(b, (list, tuple)) else b)


def check_compatible(saved: dict, current: dict, where: str) -> None:
  """Raises CheckpointMismatchError naming every shape setting that differs."""
  differences = [f'{key}={saved.get(key)!r} there, {current.get(key)!r} here'
                 for key in SHAPE_FIELDS if not _same(saved.get(key), current.get(key))]
  if differences:
    raise CheckpointMismatchError(
        f'the checkpoint in {where} belongs to another model: {"; ".join(differences)}. '
        'Use the flags it was trained with, or another --workdir.')


class Checkpoints:
  """The checkpoints of one workdir for one model configuration."""

  def __init__(self, workdir: str, model_config: dict, keep: int = 3, read_only: bool = False):
    self.workdir = workdir
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.model_config = model_config
    self.read_only = read_only
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(keep),
        checkpoint_managers.BestN(get_metric_fn=_top1, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    if read_only and not os.path.isdir(self.directory):
      raise self.none_error()
    # best_fn makes orbax write the metrics to disk (the policy alone keeps them in memory),
    # so a resumed run still knows which checkpoint is the best. Orbax's constructor would
    # fail on a metrics file that does not parse: they are read below instead.
    options = ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only,
                                           cleanup_tmp_directories=not read_only,
                                           preservation_policy=policy, best_fn=_top1,
                                           lightweight_initialize=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'config'))
    self._set_aside_steps = [] if read_only else self._read_metrics()

  def _read_metrics(self) -> list[int]:
    """Gives the policy every checkpoint's metrics; returns the steps set aside as unreadable."""
    unreadable = []
    for step in self.steps():
      try:
        self.manager.metrics(step)
      except ValueError as error:  # json.JSONDecodeError: a truncated or emptied file
        self._skip(step, error, reload=False)
        unreadable.append(step)
    self.manager.reload()
    return unreadable

  def none_error(self) -> NoCheckpointError:
    return NoCheckpointError(
        f'no checkpoints in {self.directory}: train first (--mode=train '
        f'--workdir={self.workdir}) or point --workdir at a training run.')

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, metrics: dict | None = None) -> None:
    """Starts an asynchronous save (a step already saved is left as it is)."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(self.model_config)),
        metrics=metrics, force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def saved_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def restore(self, abstract_state, step: int | None = None):
    """The newest readable state (or that of `step`) laid out like `abstract_state`.

    abstract_state's leaves are jax.ShapeDtypeStructs with the shardings wanted now,
    so a checkpoint written on one mesh restores onto any other. Returns None when the
    workdir has no checkpoint (and `step` is None). An unreadable checkpoint is skipped
    (and, unless read-only, moved to WORKDIR/corrupt/); NoCheckpointError if none is left.
    """
    candidates = [step] if step is not None else list(reversed(self.steps()))
    if step is not None and step not in self.manager.all_steps():
      raise NoCheckpointError(f'no checkpoint of step {step} in {self.directory}; '
                              f'there are {self.steps() or "none"}.')
    for candidate in candidates:
      try:
        saved = self.saved_config(candidate)
      except Exception as error:  # pylint: disable=broad-except
        self._skip(candidate, error)
        continue
      check_compatible(saved, self.model_config, self.directory)
      try:
        restored = self.manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
      except Exception as error:  # pylint: disable=broad-except
        self._skip(candidate, error)
        continue
      logging.info('Restored step %d from %s', candidate, self.directory)
      return restored['state']
    unreadable = sorted(candidates + self._set_aside_steps)
    if unreadable:
      raise NoCheckpointError(
          f'no checkpoint in {self.directory} could be read (steps {unreadable}; see the '
          'warnings above). Move them away to start afresh, or use another --workdir.')
    return None

  def _skip(self, step: int, error: Exception, reload: bool = True) -> None:
    """Leaves an unreadable checkpoint behind: moved to WORKDIR/corrupt/ unless read-only."""
    logging.warning('Checkpoint %d in %s cannot be read (%s: %s); trying an older one.',
                    step, self.directory, type(error).__name__,
                    str(error).splitlines()[0][:200] if str(error) else '')
    if not self.read_only:
      self._set_aside(step, reload)

  def _set_aside(self, step: int, reload: bool = True) -> None:
    """Moves a checkpoint out of the way, keeping its files (a later save may reuse its step)."""
    corrupt = os.path.join(os.path.abspath(self.workdir), 'corrupt')
    target = os.path.join(corrupt, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    logging.warning('Moved checkpoint %d to %s.', step, target)
    if jax.process_index() == 0:
      os.makedirs(corrupt, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    distributed.barrier(f'set_aside_{step}')  # nobody reloads before the move is done
    if reload:
      self.manager.reload()
