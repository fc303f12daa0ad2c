"""Orbax checkpoints of the train state: save, auto-resume, restore onto another mesh.

Layout: WORKDIR/checkpoints/<step>/{state, config}. `state` is the whole train state
(parameters, optimizer and schedule state, step); the step also fixes the dropout keys,
so a resumed run continues exactly. Reads (eval, predict, visualize) restore only the
parts of the state they name: the parameters, not the optimizer's state. `config` is the JSON of the settings that decide the
parameters' shapes, checked before anything is restored. Each step's orbax custom
metadata holds a digest of every array (integrity.py) and the training progress
(`batch_size`, `examples_seen`: where the input continues).

Saves are asynchronous; the newest `keep` and the best by eval top-1 are kept. A failed
background save is reported (SaveFailedError) at the next step boundary. A checkpoint
that cannot be read (half-written, truncated, bytes that no longer match their digest,
NaN or inf values) is skipped for the next older one, and once a good one is found it
is moved to WORKDIR/corrupt/: nothing is deleted, and if none is good nothing is moved.
A checkpoint of another configuration or state layout is refused, and nothing moved.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging as std_logging
import os
import re
import shutil
import time
import traceback

from absl import logging
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from alexnet_jax import distributed
from alexnet_jax import integrity
from alexnet_jax.config import ModelConfig, UserError

# The settings that define the net a checkpoint holds: its parameters' shapes, and what it
# computes with them (LRN, pooling, Caffe's geometry and input). A checkpoint only fits the
# same ones; runs on a workdir take them from its checkpoint (net_of).
NET_FIELDS = ('towers', 'num_classes', 'image_size', 'width', 'crossings', 'lrn',
              'overlapping_pool', 'lrn_variant', 'conv1_padding', 'pool_rounding',
              'input_convention')
# A checkpoint written before a field existed has its default.
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
# What must be finite in a good state (the plateau rule's best value starts at inf).
FINITE = ('params/', 'opt_state/')
# A step's metadata file (orbax's name): commit time, metrics, and our custom metadata.
METADATA_FILE = '_CHECKPOINT_METADATA'
# Orbax's log lines a user need not see: a warning at every save without metrics once
# best_fn is set (most saves have none), and a line each time it reads a damaged metadata
# file and goes on without it (a restore reports such a checkpoint once, as unverified).
_QUIET = ('Requested `tracked_metric`; did not provide metrics.', 'Metadata file does not exist',
          'Failed to read Metadata file', 'Failed to json parse Metadata file')
logging.get_absl_logger().addFilter(lambda record: not str(record.msg).startswith(_QUIET))


def _abandoned_read(record: std_logging.LogRecord) -> bool:
  """Whether asyncio reports an error of orbax's that a failed read left behind.

  When one array (or its metadata) cannot be read, orbax's restore raises at once and closes
  its event loop with the other reads' tasks in it; a task that failed too in that last turn
  of the loop keeps its error unretrieved, and asyncio logs it ("Task exception was never
  retrieved") whenever the garbage collector gets to the task: later, at random, after the
  one warning that reports the checkpoint. (What reaches sys.unraisablehook from the same
  reads, main.py drops.)
  """
  frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info else []
  return ('/orbax/' in record.getMessage()
          or any('/orbax/' in frame.filename for frame in frames))


# asyncio reports through this logger from any of orbax's loops (a new one for each read).
std_logging.getLogger('asyncio').addFilter(lambda record: not _abandoned_read(record))


def _top1(metrics: dict) -> float:
  return metrics['top1']


class CheckpointMismatchError(UserError):
  """The checkpoint was written by a model of another configuration."""


class NoCheckpointError(UserError, FileNotFoundError):
  """There is no readable checkpoint where one is needed."""


class SaveFailedError(UserError):
  """A checkpoint could not be written (disk full, no permission...)."""


class WriteFailedError(UserError):
  """The run could not write into its workdir: the disk is full, or a quota, a file size
  limit or a read-only mount stops it."""


# What a write can meet that no code can help: the storage refuses more.
_STORAGE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _os_error(error: BaseException | None) -> OSError | None:
  """The first OSError in error's chain of causes."""
  while error is not None and not isinstance(error, OSError):
    error = error.__cause__ or error.__context__
  return error


def _os_error_code(error: BaseException | None) -> int | None:
  """The errno of error's chain: an OSError's, or what TensorStore (orbax's writer) puts in
  its messages, "... No space left on device [os_error_code='28']"."""
  found = _os_error(error)
  if found is not None and found.errno:
    return found.errno
  while error is not None:
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code:
      return int(code[1])
    error = error.__cause__ or error.__context__
  return None


def os_reason(error: BaseException) -> str:
  """'No space left on device' from the errno in error's chain, else its first line."""
  code = _os_error_code(error)
  if code is not None:
    return os.strerror(code)
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__


def _same(a, b) -> bool:
  return (list(a) if isinstance(a, (list, tuple)) else a) == (
      list(b) if isinstance(b, (list, tuple)) else b)


def check_compatible(saved: dict, current: dict, where: str) -> None:
  """Raises CheckpointMismatchError naming every shape setting that differs."""
  saved = {key: saved.get(key, _DEFAULTS[key]) for key in NET_FIELDS}
  differences = [f'{key}={saved[key]!r} there, {current.get(key)!r} here'
                 for key in NET_FIELDS if not _same(saved[key], current.get(key))]
  if differences:
    raise CheckpointMismatchError(
        f'the checkpoint in {where} belongs to another model: {"; ".join(differences)}. '
        'Use the flags it was trained with, or another --workdir.')


def net_of(workdir: str) -> dict | None:
  """The NET_FIELDS of the newest readable checkpoint in workdir, None if it has none."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return None
  store = Checkpoints(workdir, {}, read_only=True)
  try:
    for step in reversed(store.steps()):
      try:
        saved = store.saved_config(step)
      except Exception:  # pylint: disable=broad-except  # unreadable: restore says why
        continue
      return {key: tuple(value) if isinstance(value, list) else value
              for key, value in ((k, saved.get(k, _DEFAULTS[k])) for k in NET_FIELDS)}
    return None
  finally:
    store.close()


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
    # save_interval_steps=0 when reading: orbax warns about any other value. best_fn makes
    # orbax write the metrics to disk (the policy alone keeps them in memory), so a resumed
    # run still knows which checkpoint is the best. Orbax's constructor would fail on a
    # metrics file that does not parse: they are read below instead.
    options = ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only,
                                           cleanup_tmp_directories=not read_only,
                                           save_interval_steps=0 if read_only else 1,
                                           preservation_policy=policy, best_fn=_top1,
                                           lightweight_initialize=True)
    # Handlers named up front: a fresh manager can then read a step's metadata. Reads
    # take the PyTree handler, which restores part of what StandardSave wrote.
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': (ocp.PyTreeCheckpointHandler() if read_only
                                 else ocp.StandardCheckpointHandler()),
                       'config': ocp.JsonCheckpointHandler()})
    self._failed, self._saving = False, None
    self._torn = [] if read_only else self._read_metrics()
    if not read_only:
      distributed.set_resume_note(self._resume_note)  # what outlives a lost process says

  def _read_metrics(self) -> list[int]:
    """Gives the policy every checkpoint's metrics; sets aside those whose file is torn.

    Orbax commits a step's metrics with its arrays, so a metrics file that does not parse
    (what a kill -9 or a full disk can leave) marks a torn checkpoint; orbax's own reload
    would fail on it.
    """
    torn = []
    for step in self.steps():
      try:
        self.manager.metrics(step)
      except ValueError as error:  # json.JSONDecodeError: a truncated or emptied file
        self._move_aside(step, f'its metrics file does not parse ({_first_line(error)})')
        torn.append(step)
    self.manager.reload()  # reads the metrics of the rest into the preservation policy
    return torn

  def none_error(self) -> NoCheckpointError:
    return NoCheckpointError(
        f'no checkpoints in {self.directory}: train first (--mode=train '
        f'--workdir={self.workdir}) or point --workdir at a training run.')

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, metrics: dict | None = None,
           progress: dict | None = None) -> None:
    """Starts an asynchronous save (a step already saved is left as it is).

    progress (JSON) goes into the step's metadata with the digests; see `progress`.
    """
    if step in self.manager.all_steps():
      return
    digests = integrity.digests(state)
    self.wait()  # orbax would wait too, and raise the previous save's error as this one's
    self._saving = step
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(self.model_config)),
          metrics=metrics, force=True,
          custom_metadata={'digests': digests, **(progress or {})})
    except Exception as error:  # pylint: disable=broad-except
      if _os_error(error) is None:
        raise  # a bug, not the file system
      raise self._save_failed(error) from error

  def progress(self, step: int) -> dict:
    """The training progress saved with `step` ({} for checkpoints written before it was)."""
    return {key: value for key, value in self._custom_metadata(step).items()
            if key != 'digests'}

  def _custom_metadata(self, step: int) -> dict:
    """What save() recorded beside the arrays (digests, progress). Read here, not by orbax,
    which takes a damaged file for an empty one: OSError or ValueError if it is damaged."""
    with open(os.path.join(self.directory, str(step), METADATA_FILE)) as f:
      metadata = json.load(f)
    if not isinstance(metadata, dict):
      raise ValueError(f'{METADATA_FILE} holds no JSON object')
    return metadata.get('custom_metadata') or {}

  def check_saves(self) -> None:
    """SaveFailedError if a background save has failed (returns at once while one runs)."""
    if not self.manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Waits for the save in flight; SaveFailedError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      raise self._save_failed(error) from error  # orbax re-raises the background error

  def newest(self) -> int | None:
    """The newest complete checkpoint on disk now, read afresh: orbax writes a checkpoint
    under a temporary name and gives it its step's once every process has written it."""
    steps = [int(name) for name in os.listdir(self.directory) if name.isdigit()]
    return max(steps, default=None)

  def _resume_note(self) -> str:
    newest = self.newest()
    if newest is None:
      return 'No checkpoint was saved yet: run the same command to start again.'
    return (f'The newest good checkpoint is step {newest} in {self.directory}: run the same '
            'command to resume from it.')

  def _save_failed(self, error: BaseException) -> SaveFailedError:
    self._failed = True
    self.manager.reload()  # orbax already dropped the steps this save was to replace
    newest = self.newest()
    return SaveFailedError(
        f'checkpoint of step {self._saving} not written: {os_reason(error)} in '
        f'{self.directory}; the newest good checkpoint is '
        f'{"none" if newest is None else f"step {newest}"}.')

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, kind, error, traceback) -> None:
    """close(); a run stopped by a write the storage refused (metrics, TensorBoard events, an
    evaluation's result: a full disk) as WriteFailedError, naming the newest checkpoint."""
    self.close()  # SaveFailedError if the last save failed: it says all there is to say
    if isinstance(error, UserError) or _os_error_code(error) not in _STORAGE_FULL:
      return
    newest, written = self.newest(), getattr(_os_error(error), 'filename', None)
    saved = (f'the newest good checkpoint is step {newest}' if newest is not None
             else 'no checkpoint yet')
    fix = 'Make it writable' if _os_error_code(error) == errno.EROFS else 'Make room'
    raise WriteFailedError(
        f'the run cannot write into {self.workdir}: {os_reason(error)}'
        f'{f" ({written})" if written else ""}; {saved}. {fix} and run the same command to '
        'resume.') from error

  def close(self) -> None:
    """Waits for the last save (SaveFailedError if it failed), then closes the manager."""
    if self._failed:
      return  # reported once already; orbax would raise it again
    self.wait()
    self.manager.close()

  def saved_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def restore(self, abstract_state, step: int | None = None):
    """The newest good state (or that of `step`) laid out like `abstract_state`.

    abstract_state's leaves are jax.ShapeDtypeStructs with the shardings wanted now,
    so a checkpoint written on one mesh restores onto any other. Read-only, it may be a
    dict of some of the state's fields ({'step': ..., 'params': ...}): only those are
    read. Returns None when the workdir has no checkpoint (and `step` is None). Candidates are tried newest first:
    one of another configuration or state layout raises CheckpointMismatchError (nothing
    moved); one that cannot be read or verified is skipped, and once a good one is found
    it is moved to WORKDIR/corrupt/ unless read-only (one warning each, saying why). If
    none is good: NoCheckpointError, and nothing is moved.
    """
    candidates = [step] if step is not None else list(reversed(self.steps()))
    if step is not None and step not in self.manager.all_steps():
      raise NoCheckpointError(f'no checkpoint of step {step} in {self.directory}; '
                              f'there are {self.steps() or "none"}.')
    wanted = integrity.layout(abstract_state)
    unreadable = []
    for candidate in candidates:
      state, why = self._read(candidate, abstract_state, wanted)
      if state is None:
        unreadable.append((candidate, why))
        continue
      for bad, reason in unreadable:
        self._skip(bad, reason, candidate)
      logging.info('Restored step %d from %s', candidate, self.directory)
      return state
    if self._torn and not candidates:
      raise NoCheckpointError(
          f'no checkpoint in {self.directory} could be read: steps {self._torn} were torn '
          'and are set aside in WORKDIR/corrupt/. Move them back only to inspect them; '
          'train afresh in another --workdir.')
    if candidates:
      reasons = '; '.join(f'step {bad}: {reason}' for bad, reason in unreadable)
      moved = (f'steps {self._torn} were torn and are set aside in WORKDIR/corrupt/, the '
               'rest left in place' if self._torn else 'Nothing was moved')
      raise NoCheckpointError(
          f'no checkpoint in {self.directory} could be read ({reasons}). {moved}: '
          'move the directory away to start afresh, or use another --workdir.')
    return None

  def _read(self, step: int, abstract_state, wanted: dict):
    """(state, None), or (None, why it is unreadable); CheckpointMismatchError if it fits not."""
    try:
      saved = self.saved_config(step)
    except Exception as error:  # pylint: disable=broad-except
      return None, f'its config cannot be read ({_first_line(error)})'
    check_compatible(saved, self.model_config, self.directory)
    try:
      metadata = self.manager.item_metadata(step)['state']
      saved_layout = integrity.layout(getattr(metadata, 'tree', metadata))
    except Exception as error:  # pylint: disable=broad-except
      return None, f'its state metadata cannot be read ({_first_line(error)})'
    if self.read_only:  # only the fields asked for
      fields = {path.split('/')[0] for path in wanted}
      saved_layout = {path: leaf for path, leaf in saved_layout.items()
                      if path.split('/')[0] in fields}
    difference = integrity.layout_difference(saved_layout, wanted)
    if difference:
      raise CheckpointMismatchError(
          f'checkpoint {step} in {self.directory} holds another train state (written by '
          f'another version of the code or another optimizer): {difference}. Use the code '
          'and flags it was trained with, or another --workdir.')
    try:
      digests = self._custom_metadata(step).get('digests')
    except (OSError, ValueError) as error:
      return None, (f'its {METADATA_FILE} cannot be read ({_first_line(error)}), so its arrays '
                    'cannot be verified against their digests')
    try:
      if self.read_only:
        read = ocp.args.PyTreeRestore(
            abstract_state, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))
      else:
        read = ocp.args.StandardRestore(abstract_state)
      state = self.manager.restore(step, args=ocp.args.Composite(state=read))['state']
    except Exception as error:  # pylint: disable=broad-except
      return None, f'its arrays cannot be read ({_first_line(error)})'
    why = integrity.verify(state, digests, FINITE)
    return (None, why) if why else (state, None)

  def _skip(self, step: int, why: str, used: int) -> None:
    """One warning for an unreadable checkpoint; moved to WORKDIR/corrupt/ unless read-only."""
    if self.read_only:
      logging.warning('Checkpoint %d in %s is unreadable (%s); using step %d.',
                      step, self.directory, why, used)
      return
    self._move_aside(step, f'{why}; using step {used}')
    self.manager.reload()

  def _move_aside(self, step: int, why: str) -> None:
    """Moves a checkpoint to WORKDIR/corrupt/, keeping its files (a later save may reuse its
    step), with one warning saying why."""
    corrupt = os.path.join(os.path.abspath(self.workdir), 'corrupt')
    target = os.path.join(corrupt, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    logging.warning('Checkpoint %d in %s is unreadable (%s): moved to %s.',
                    step, self.directory, why, target)
    if jax.process_index() == 0:
      os.makedirs(corrupt, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    distributed.barrier(f'set_aside_{step}')  # nobody reloads before the move is done


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return f'{type(error).__name__}: {text.splitlines()[0][:200]}' if text else type(error).__name__
