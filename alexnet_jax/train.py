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
from typing import Any

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
from alexnet_jax.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig, UserError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  plateau: Any          # optax.contrib reduce_on_plateau state: the learning-rate scale


# jaxlib's CPU backend (0.10 to 0.12) hands convolutions, dots and reductions to YNNPACK;
# its convolutions are slower here than XLA's own (Eigen), so the step keeps YNNPACK for dots
# and reductions only: x1.3 to x2.1 training images/s on 2 cores with jaxlib 0.10, x1.5 with
# 0.12 (docs/PERFORMANCE.md). The option is experimental: only the jaxlibs it was measured
# on get it.
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
                        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
CPU_COMPILER_OPTIONS_JAXLIBS = ('0.10.', '0.11.', '0.12.')


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss stopped being a finite number."""


def loss_fn(forward, params, images, labels, dropout_rng):
  """Mean softmax cross-entropy of the training-mode forward pass."""
  logits = forward(params, images, dropout_rng, train=True)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _state_from_params(tx, plateau, shardings, params) -> TrainState:
  # The momentum takes its parameter's sharding. Zeros carry none: XLA laid them out
  # replicated, the step returns them split like the parameters, and the training loop
  # compiled the step a second time for that.
  opt_state = optax.tree_utils.tree_map_params(tx, jax.lax.with_sharding_constraint,
                                               tx.init(params), shardings)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                    plateau=plateau.init(params))


def _make_state(tx, plateau, params):
  """The jitted _state_from_params for parameters (arrays or ShapeDtypeStructs) like these."""
  shardings = jax.tree.map(lambda p: p.sharding, params)
  return jax.jit(functools.partial(_state_from_params, tx, plateau, shardings))


def optimizer_of(model_config: ModelConfig, opt_config: OptimizerConfig, mesh):
  """(the paper's SGD, the plateau rule) for this net's parameters."""
  return (optimizer_lib.make(opt_config, parallel.abstract_sharded_params(model_config, mesh)),
          optimizer_lib.plateau_rule(opt_config))


def init_state(model_config: ModelConfig, opt_config: OptimizerConfig, mesh,
               rng: jax.Array) -> TrainState:
  """A fresh train state, made directly in its shardings on the mesh."""
  tx, plateau = optimizer_of(model_config, opt_config, mesh)
  params = parallel.init_sharded_params(model_config, rng, mesh)
  return _make_state(tx, plateau, params)(params)


def abstract_state(model_config: ModelConfig, opt_config: OptimizerConfig,
                   mesh) -> TrainState:
  """ShapeDtypeStructs with this mesh's shardings: the restore target (no computation)."""
  tx, plateau = optimizer_of(model_config, opt_config, mesh)
  params = parallel.abstract_sharded_params(model_config, mesh)
  make = _make_state(tx, plateau, params)
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

  # The option is experimental: only the jaxlibs it was measured on get it.
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


def _check_finite(value: float, step: int, checkpoints: checkpoints_lib.Checkpoints,
                  what: str = 'training loss') -> None:
  if not math.isfinite(value):
    checkpoints.wait()
    saved = checkpoints.steps()
    raise NonFiniteLossError(
        f'the {what} became {value} at step {step}. Nothing after the last good checkpoint '
        f'was saved ({"step " + str(saved[-1]) if saved else "none yet"}). Lower '
        '--learning_rate, try --init=he, or check the input data.')


def train_and_evaluate(model_config: ModelConfig, data_config: DataConfig,
                       opt_config: OptimizerConfig, train_config: TrainConfig, mesh,
                       workdir: str) -> dict | None:
  """Trains (resuming from the newest checkpoint in workdir) and evaluates.

  Returns the last evaluation result; None if stopped by SIGTERM or Ctrl-C, or if the
  checkpoint it resumed from was already the last step. A checkpoint of another batch
  size is resumed only with train_config.allow_batch_change (resume.py).
  """
  from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  num_classes, num_train, _, _ = input_pipeline.dataset_info(data_config)
  if num_classes != model_config.num_classes:
    raise UserError(f'{data_config.dataset} has {num_classes} classes but the model has '
                     f'{model_config.num_classes}: set --num_classes={num_classes}.')
  batch = train_config.batch_size
  steps_per_epoch = max(1, num_train // batch)
  total = train_config.num_train_steps or max(1, round(train_config.num_epochs * steps_per_epoch))
  eval_every = train_config.eval_every_steps or steps_per_epoch
  # Process 0 computes a missing pixel mean image; the others then read its file.
  distributed.in_turn('mean', lambda: input_pipeline.normalizer_for(data_config, workdir))
  normalizer = input_pipeline.normalizer_for(data_config, workdir)
  make_step = functools.partial(make_train_step, model_config, opt_config, mesh,
                                batch_size=batch, normalizer=normalizer,
                                pca_std=data_config.pca_std, seed=train_config.seed)
  eval_step = evaluate_lib.make_eval_step(model_config, mesh, normalizer)

  with contextlib.ExitStack() as cleanup:
    checkpoints = checkpoints_lib.Checkpoints(workdir, dataclasses.asdict(model_config),
                                              keep=train_config.keep_checkpoints)
    cleanup.enter_context(checkpoints)  # closes it; a full disk is one line (checkpoints.py)
    writer = metrics_lib.MetricsWriter(workdir)
    cleanup.callback(writer.close)
    state = checkpoints.restore(abstract_state(model_config, opt_config, mesh))
    if state is None:
      state = init_state(model_config, opt_config, mesh, jax.random.key(train_config.seed))
      examples = 0
    else:
      examples = resume_lib.examples_seen(checkpoints.progress(int(state.step)),
                                          int(state.step), batch,
                                          train_config.allow_batch_change)
    first = int(state.step)
    if examples != first * batch and not train_config.num_train_steps:
      # Resumed with another batch size: --num_epochs counts the examples left.
      total = resume_lib.end_step(first, examples, batch, train_config.num_epochs,
                                  steps_per_epoch)
    train_step = make_step(total_steps=total)  # its schedule spans the run to its end
    seen = lambda step: examples + (step - first) * batch
    epoch = lambda step: seen(step) / (steps_per_epoch * batch)
    logging.info('Training steps %d..%d (%d per epoch), batch %d, on mesh %s.',
                 first, total, steps_per_epoch, batch, dict(mesh.shape))
    batches = input_pipeline.train_batches(data_config, batch, mesh, start_examples=examples)
    progress = metrics_lib.Progress(total, batch, eval_every)
    profiler = _Profiler(f'{workdir}/profile', first + 5, train_config.profile_steps)
    cleanup.callback(profiler.stop)
    preemption = cleanup.enter_context(distributed.Preemption())
    # Processes must stop at one agreed step: SIGTERM does that (launch.sh turns Ctrl-C into it).
    ctrl_c = cleanup.enter_context(interrupts.CtrlC(enabled=jax.process_count() == 1))
    cleanup.enter_context(jax.set_mesh(mesh))
    result, pending, losses = None, None, []

    def flush():
      """Checks the loss of the last dispatched step (this waits for that step)."""
      nonlocal pending
      if pending is not None:
        losses.append(_checked_loss(*pending, checkpoints))
        progress.step_done(pending[0] + 1)
        pending = None

    def save(step, metrics=None):
      flush()  # never save a state after a non-finite loss, or non-finite parameters
      if not bool(_all_finite(state.params)):
        _check_finite(math.nan, step, checkpoints, 'parameters')
      checkpoints.save(step, state, metrics,
                       progress={'batch_size': batch, 'examples_seen': seen(step)})

    for step in range(first, total):
      checkpoints.check_saves()  # a failed background save stops the run here
      sigterm = preemption.reached(step)  # on every process at the same step
      if sigterm or ctrl_c.requested:
        save(step)
        checkpoints.wait()
        logging.warning('Stopped at step %d after %s; checkpoint saved.', step,
                        'SIGTERM' if sigterm else 'Ctrl-C')
        return None
      profiler.at_step(step)
      inputs = next(batches)
      # Everything the step needs is on the devices already: any hidden copy is an error.
      with jax.profiler.StepTraceAnnotation('train', step_num=step), \
          jax.transfer_guard('disallow'):
        state, metrics = train_step(state, inputs)
      flush()  # the previous step's loss, read while this step runs
      pending = (step, metrics)
      done = step + 1
      if done % train_config.log_every_steps == 0 or done == total:
        flush()
        learning_rate = float(metrics['learning_rate'])
        line, rate = progress.line(done, float(np.mean(losses)), learning_rate)
        if jax.process_index() == 0:
          logging.info(line)
        rate = {} if rate is None else {'images_per_second': rate}  # unknown for step 1
        writer.write(done, loss=float(np.mean(losses)), learning_rate=learning_rate,
                     epoch=epoch(done), **rate)
        losses = []
      evaluating = done % eval_every == 0 or done == total
      if evaluating:
        flush()  # never evaluate a state after a non-finite loss
        started = time.time()
        result = evaluate_lib.evaluate_split(eval_step, state.params, data_config,
                                             train_config.eval_batch, mesh)
        _record_eval(result, done, epoch(done), data_config, writer, workdir)
        state = after_eval(opt_config, state, result['top1'], mesh)
        progress.evaluated(time.time() - started)
      if evaluating or done % train_config.checkpoint_every_steps == 0:
        started = time.time()
        save(done, {'top1': result['top1']} if evaluating else None)
        progress.paused(time.time() - started)  # the first save compiles its digests
  return result


def _record_eval(result, step, epoch, data_config, writer, workdir) -> None:
  """eval/<split>_step<N>.json, a metrics line and a log line (process 0 writes)."""
  writer.write(step, top1=result['top1'], top5=result['top5'], eval_loss=result['loss'],
               epoch=epoch, crops=data_config.eval_crops)
  if jax.process_index() == 0:
    evaluate_lib.write_result(workdir, data_config.eval_split, step, result)
    logging.info('eval at step %d: %s', step, evaluate_lib.result_summary(result))


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


def _checked_loss(step, metrics, checkpoints) -> float:
  loss = float(metrics['loss'])
  _check_finite(loss, step, checkpoints)
  return loss


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
