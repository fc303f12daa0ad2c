"""Training: the train state, the jitted step over the mesh, and the loop.

One step: uint8 batch -> PCA noise and mean subtraction (preprocess) -> the sharded
forward (parallel) -> cross-entropy -> gradients from outside the shard_map -> the
paper's SGD (optimizer). The RNG of step N is fold_in(seed, N); the input continues after
the examples seen, N * batch unless the batch size changed (resume.py), so a resumed
run continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from typing import Any, Iterator, Protocol

from absl import logging
import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from alexnet_jax import checkpoints as checkpoints_lib
from alexnet_jax import distributed
from alexnet_jax import evaluate as evaluate_lib
from alexnet_jax import interrupts
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import optimizer as optimizer_lib
from alexnet_jax import parallel
from alexnet_jax import preprocess
from alexnet_jax import resume as resume_lib
from alexnet_jax.config import ModelConfig, OptimizerConfig, TrainConfig, UserError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  plateau: Any          # optax.contrib reduce_on_plateau state: the learning-rate scale


# jaxlib's CPU backend hands convolutions, dots and reductions to YNNPACK, whose convolutions
# are slower than XLA's own (Eigen): the step keeps YNNPACK for dots and reductions only
# (measured in docs/PERFORMANCE.md). The option is experimental: only the jaxlibs it was
# measured on get it.
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
                        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
CPU_COMPILER_OPTIONS_JAXLIBS = ('0.10.', '0.11.', '0.12.')


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss stopped being a finite number."""


def loss_fn(forward, params, images, labels, dropout_rng):
  """Mean softmax cross-entropy of the training-mode forward pass."""
  logits = forward(params, images, dropout_rng, train=True)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.cache
def optimizer_of(model_config: ModelConfig, opt_config: OptimizerConfig, mesh):
  """(the paper's SGD, the plateau rule) for this net's parameters, built once per run."""
  return (optimizer_lib.make(opt_config, parallel.abstract_sharded_params(model_config, mesh)),
          optimizer_lib.plateau_rule(opt_config))


@functools.cache
def _state_maker(model_config: ModelConfig, opt_config: OptimizerConfig, mesh):
  """jit(params -> a fresh TrainState around them), the state laid out on the mesh."""
  tx, plateau = optimizer_of(model_config, opt_config, mesh)
  shardings = jax.tree.map(lambda p: p.sharding,
                           parallel.abstract_sharded_params(model_config, mesh))

  def make(params) -> TrainState:
    # Each momentum takes its parameter's sharding: zeros carry none, and XLA would lay
    # them out replicated where the step returns them split like the parameters.
    opt_state = optax.tree_utils.tree_map_params(tx, jax.lax.with_sharding_constraint,
                                                 tx.init(params), shardings)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      plateau=plateau.init(params))

  return jax.jit(make)


def init_state(model_config: ModelConfig, opt_config: OptimizerConfig, mesh,
               rng: jax.Array) -> TrainState:
  """A fresh train state, made directly in its shardings on the mesh."""
  params = parallel.init_sharded_params(model_config, rng, mesh)
  return _state_maker(model_config, opt_config, mesh)(params)


def state_from_params(model_config: ModelConfig, opt_config: OptimizerConfig, mesh,
                      params) -> TrainState:
  """A train state at step 0 around these parameters (an imported net's, another run's)."""
  shardings = jax.tree.map(lambda p: p.sharding,
                           parallel.abstract_sharded_params(model_config, mesh))
  return _state_maker(model_config, opt_config, mesh)(jax.device_put(params, shardings))


def abstract_state(model_config: ModelConfig, opt_config: OptimizerConfig,
                   mesh) -> TrainState:
  """ShapeDtypeStructs with this mesh's shardings: the restore target (no computation)."""
  params = parallel.abstract_sharded_params(model_config, mesh)
  make = _state_maker(model_config, opt_config, mesh)
  shapes = jax.eval_shape(make, params)
  shardings = make.lower(params).compile().output_shardings
  return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                               sharding=sharding),
                      shapes, shardings)


def learning_rate(schedule, state: TrainState) -> jax.Array:
  return schedule(state.step) * state.plateau.scale


def make_train_step(model_config: ModelConfig, opt_config: OptimizerConfig, mesh, *,
                    batch_size: int, total_steps: int, normalizer,
                    pca_std: float, seed: int):
  """step(state, batch) -> (state, {'loss', 'learning_rate'}), jitted, the state donated.

  normalizer makes the model input from the uint8 batch (preprocess.Normalizer for host
  crops, device_augment.SquareAugmenter for the store's squares). The RNG of step N is
  fold_in(seed, N): crops, flips, PCA noise and dropout follow the step alone.
  """
  tx, _ = optimizer_of(model_config, opt_config, mesh)
  schedule = optimizer_lib.schedule(opt_config, batch_size, total_steps)
  forward = parallel.sharded_forward(model_config, mesh)

  def step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    pca_rng, dropout_rng = jax.random.split(rng)
    images = normalizer(batch['images'], pca_std=pca_std, rng=pca_rng)
    loss, grads = jax.value_and_grad(
        lambda p: loss_fn(forward, p, images, batch['labels'], dropout_rng))(state.params)
    rate = learning_rate(schedule, state)
    opt_state = state.opt_state._replace(
        hyperparams={**state.opt_state.hyperparams, 'learning_rate': rate})
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {'loss': loss, 'learning_rate': rate}

  tuned_cpu = (mesh.devices.flat[0].platform == 'cpu'
               and jaxlib.__version__.startswith(CPU_COMPILER_OPTIONS_JAXLIBS))
  return jax.jit(step, donate_argnums=0,
                 compiler_options=CPU_COMPILER_OPTIONS if tuned_cpu else None)


def after_eval(opt_config: OptimizerConfig, state: TrainState, top1: float,
               mesh) -> TrainState:
  """Feeds the validation error to the plateau rule (paper: divide by 10 on a plateau)."""
  if opt_config.schedule != 'plateau':
    return state
  plateau = optimizer_lib.plateau_rule(opt_config)
  _, plateau_state = plateau.update(updates={}, state=state.plateau, value=1.0 - top1)
  return state.replace(plateau=jax.device_put(plateau_state,
                                              jax.sharding.NamedSharding(mesh, jax.P())))


class _Profiler:
  """A profiler trace of `steps` training steps from `start` on (TensorBoard's profile tab)."""

  def __init__(self, directory: str, start: int, steps: int):
    self.directory, self.start, self.end = directory, start, start + steps
    self.active = False

  def at_step(self, step: int) -> None:
    if step == self.start and self.end > self.start:
      jax.profiler.start_trace(self.directory)
      self.active = True
    elif step == self.end:
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.info('Wrote a profiler trace to %s', self.directory)


class TrainingInput(Protocol):
  """What the loop reads; the caller makes it (input_pipeline.training_input)."""
  examples_per_epoch: int
  normalizer: Any               # uint8 batch -> model input (preprocess, device_augment)
  pca_std: float                # the paper's colour noise
  eval_split: str
  eval_crops: int
  damaged_records: int          # damaged records of the input skipped so far

  def train_batches(self, start_examples: int) -> Iterator[dict]:
    """Global training batches after `start_examples` examples seen."""

  def eval_batches(self) -> Iterator[dict]:
    """The evaluation split once, padded and masked."""


def train_and_evaluate(model_config: ModelConfig, opt_config: OptimizerConfig,
                       train_config: TrainConfig, mesh, workdir: str,
                       data: TrainingInput) -> dict | None:
  """Trains (resuming from the newest checkpoint in workdir) and evaluates.

  Returns the last evaluation result; None if stopped by SIGTERM or Ctrl-C, or if the
  checkpoint it resumed from was already the last step. A checkpoint of another batch
  size is resumed only with train_config.allow_batch_change (resume.py).
  """
  with contextlib.ExitStack() as cleanup:
    run = _Run(model_config, opt_config, train_config, mesh, workdir, data, cleanup)
    batches = data.train_batches(run.examples)
    for step in range(run.first, run.total):
      if run.stop_requested(step):
        run.stop(step)
        return None
      run.step(step, next(batches))
      run.log(step + 1)
      run.evaluate(step + 1)
      run.save(step + 1)
    return run.result


class _Run:
  """One training run: its state, and what happens around each step."""

  def __init__(self, model_config, opt_config, train_config, mesh, workdir, data, cleanup):
    self.opt_config, self.config, self.mesh, self.workdir = opt_config, train_config, mesh, workdir
    self.data, batch = data, train_config.batch_size
    # From the restore to the last save, Ctrl-C asks for a checkpoint (processes must stop
    # at one agreed step: SIGTERM does that, and launch.sh turns Ctrl-C into it).
    self.ctrl_c = cleanup.enter_context(interrupts.CtrlC(enabled=jax.process_count() == 1))
    self.checkpoints = checkpoints_lib.Checkpoints(workdir, dataclasses.asdict(model_config),
                                                   keep=train_config.keep_checkpoints)
    cleanup.enter_context(self.checkpoints)  # closes it; a full disk is one line
    self.writer = metrics_lib.MetricsWriter(workdir)
    cleanup.callback(self.writer.close)
    self.steps_per_epoch = max(1, data.examples_per_epoch // batch)
    self.total = train_config.num_train_steps or max(
        1, round(train_config.num_epochs * self.steps_per_epoch))
    self.state, self.examples = self._restore(model_config, opt_config, mesh)
    self.first = int(self.state.step)
    if self.examples != self.first * batch and not train_config.num_train_steps:
      # Resumed with another batch size: --num_epochs counts the examples left.
      self.total = resume_lib.end_step(self.first, self.examples, batch,
                                       train_config.num_epochs, self.steps_per_epoch)
    self.eval_every = train_config.eval_every_steps or self.steps_per_epoch
    # The schedule spans the run to its end.
    self.train_step = make_train_step(model_config, opt_config, mesh, batch_size=batch,
                                      total_steps=self.total, normalizer=data.normalizer,
                                      pca_std=data.pca_std, seed=train_config.seed)
    self.eval_step = evaluate_lib.make_eval_step(model_config, mesh, data.normalizer)
    logging.info('Training steps %d..%d (%d per epoch), batch %d, on mesh %s.', self.first,
                 self.total, self.steps_per_epoch, batch, dict(mesh.shape))
    self.progress = metrics_lib.Progress(self.total, batch, self.eval_every)
    self.profiler = _Profiler(f'{workdir}/profile', self.first + 5, train_config.profile_steps)
    cleanup.callback(self.profiler.stop)
    self.preemption = cleanup.enter_context(distributed.Preemption())
    cleanup.enter_context(jax.set_mesh(mesh))
    self.result, self._pending, self._losses, self._stop_reason = None, None, [], None

  def _restore(self, model_config, opt_config, mesh) -> tuple[TrainState, int]:
    """(the newest good checkpoint's state, or a fresh one; the examples it has seen).

    A fresh state starts from --init_from's parameters (at step 0), if given.
    """
    state = self.checkpoints.restore(abstract_state(model_config, opt_config, mesh))
    if state is None and self.config.init_from:
      step, params = restore_params(model_config, mesh, self.config.init_from)
      logging.info('Starting from the parameters of step %d in %s.', step,
                   self.config.init_from)
      return state_from_params(model_config, opt_config, mesh, params), 0
    if state is None:
      return init_state(model_config, opt_config, mesh, jax.random.key(self.config.seed)), 0
    step = int(state.step)
    return state, resume_lib.examples_seen(self.checkpoints.progress(step), step,
                                           self.config.batch_size,
                                           self.config.allow_batch_change)

  def _seen(self, step: int) -> int:
    return self.examples + (step - self.first) * self.config.batch_size

  def _epoch(self, step: int) -> float:
    return self._seen(step) / (self.steps_per_epoch * self.config.batch_size)

  def stop_requested(self, step: int) -> bool:
    """Whether to save and stop before `step`: SIGTERM (on every process at once) or Ctrl-C.

    A failed background save stops the run here too (SaveFailedError).
    """
    self.checkpoints.check_saves()
    self._stop_reason = ('SIGTERM' if self.preemption.reached(step)
                         else 'Ctrl-C' if self.ctrl_c.requested else None)
    return self._stop_reason is not None

  def stop(self, step: int) -> None:
    self._save(step)
    self.checkpoints.wait()
    logging.warning('Stopped at step %d after %s; checkpoint saved.', step, self._stop_reason)

  def step(self, step: int, batch: dict) -> None:
    """Dispatches the step; the previous step's loss is read while this one runs."""
    self.profiler.at_step(step)
    # Everything the step needs is on the devices already: any hidden copy is an error.
    with jax.profiler.StepTraceAnnotation('train', step_num=step), \
        jax.transfer_guard('disallow'):
      self.state, metrics = self.train_step(self.state, batch)
    self._flush()
    self._pending = (step, metrics)

  def _flush(self) -> None:
    """Checks the loss of the last dispatched step (this waits for that step)."""
    if self._pending is not None:
      step, metrics = self._pending
      loss = float(metrics['loss'])
      _check_finite(loss, step, self.checkpoints)
      self._losses.append(loss)
      self.progress.step_done(step + 1)
      self._pending = None

  def log(self, done: int) -> None:
    """The progress line and a metrics line, every log_every_steps and at the end."""
    if done % self.config.log_every_steps and done != self.total:
      return
    rate_now = float(self._pending[1]['learning_rate'])
    self._flush()
    loss = float(np.mean(self._losses))
    line, images_per_second = self.progress.line(done, loss, rate_now)
    if jax.process_index() == 0:
      logging.info(line)
    extra = {} if images_per_second is None else {'images_per_second': images_per_second}
    if self.data.damaged_records:
      extra['damaged_records_skipped'] = self.data.damaged_records
    self.writer.write(done, loss=loss, learning_rate=rate_now, epoch=self._epoch(done), **extra)
    self._losses = []

  def _evaluating(self, done: int) -> bool:
    return done % self.eval_every == 0 or done == self.total

  def evaluate(self, done: int) -> None:
    """Evaluates every eval_every steps and at the end; feeds the plateau rule."""
    if not self._evaluating(done):
      return
    self._flush()  # never evaluate a state after a non-finite loss
    started = time.time()
    result = evaluate_lib.evaluate(self.eval_step, self.state.params, self.data.eval_batches())
    self.result = dict(result, crops=self.data.eval_crops)
    self.writer.write(done, top1=result['top1'], top5=result['top5'], eval_loss=result['loss'],
                      epoch=self._epoch(done), crops=self.data.eval_crops)
    if jax.process_index() == 0:
      evaluate_lib.write_result(self.workdir, self.data.eval_split, done, self.result)
      logging.info('eval at step %d: %s', done, evaluate_lib.result_summary(self.result))
    self.state = after_eval(self.opt_config, self.state, result['top1'], self.mesh)
    self.progress.evaluated(time.time() - started)

  def save(self, done: int) -> None:
    """Saves every checkpoint_every_steps and after each evaluation (with its top-1)."""
    if self._evaluating(done):
      self._save(done, {'top1': self.result['top1']})
    elif done % self.config.checkpoint_every_steps == 0:
      self._save(done)

  def _save(self, step: int, metrics: dict | None = None) -> None:
    """Never a state after a non-finite loss, or non-finite parameters."""
    started = time.time()
    self._flush()
    if not bool(_all_finite(self.state.params)):
      _check_finite(math.nan, step, self.checkpoints, 'parameters')
    self.checkpoints.save(step, self.state, metrics,
                          progress={'batch_size': self.config.batch_size,
                                    'examples_seen': self._seen(step)})
    self.progress.paused(time.time() - started)  # the first save compiles its digests


def _check_finite(value: float, step: int, checkpoints: checkpoints_lib.Checkpoints,
                  what: str = 'training loss') -> None:
  if not math.isfinite(value):
    checkpoints.wait()
    saved = checkpoints.steps()
    raise NonFiniteLossError(
        f'the {what} became {value} at step {step}. Nothing after the last good checkpoint '
        f'was saved ({"step " + str(saved[-1]) if saved else "none yet"}). Lower '
        '--learning_rate, try --init=he, or check the input data.')


def restore_params(model_config: ModelConfig, mesh, workdir: str, step: int | None = None):
  """(step, params) of the newest checkpoint in workdir (or of `step`), laid out on mesh.

  Reads the parameters alone: the optimizer's state (as large again) stays on disk.
  """
  checkpoints = checkpoints_lib.Checkpoints(workdir, dataclasses.asdict(model_config),
                                            read_only=True)
  try:
    target = {'step': jax.ShapeDtypeStruct((), jnp.int32),
              'params': parallel.abstract_sharded_params(model_config, mesh)}
    state = checkpoints.restore(target, step)
    if state is None:
      raise checkpoints.none_error()
    return int(state['step']), state['params']
  finally:
    checkpoints.close()


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def lower_train_step(config: ModelConfig, mesh, global_batch: int):
  """The jitted training step lowered for abstract inputs on `mesh` (no data, no compute)."""
  opt_config = OptimizerConfig()
  step = make_train_step(config, opt_config, mesh, batch_size=global_batch, total_steps=1,
                         normalizer=preprocess.Normalizer(preprocess.CHANNEL_MEAN),
                         pca_std=0.1, seed=0)
  size = config.image_size
  data = parallel.batch_sharding(mesh)
  batch = {'images': jax.ShapeDtypeStruct((global_batch, size, size, 3), jnp.uint8,
                                          sharding=data),
           'labels': jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=data)}
  with jax.set_mesh(mesh):
    return step.lower(abstract_state(config, opt_config, mesh), batch)
