"""The paper's update rule and learning-rate schedules, composed from optax.

Paper, section 5 (learning rate inside the velocity):
    v <- 0.9 v - 0.0005 * lr * w - lr * grad
    w <- w + v
In optax terms: add the decayed weights, scale by the (scheduled) learning rate, then
trace(0.9). `optax.sgd(lr, momentum)` puts lr outside the velocity instead; the two
differ right after every learning-rate drop.
"""

from __future__ import annotations

import jax
import optax
from optax import contrib

from alexnet_jax.config import OptimizerConfig

PAPER_BATCH = 128


def peak_learning_rate(config: OptimizerConfig, batch_size: int) -> float:
  scale = batch_size / PAPER_BATCH if config.linear_scaling else 1.0
  return config.learning_rate * scale


def schedule(config: OptimizerConfig, batch_size: int, total_steps: int) -> optax.Schedule:
  """The step-based part of the learning rate (the plateau rule multiplies it)."""
  peak = peak_learning_rate(config, batch_size)
  if config.schedule == 'step':
    return optax.exponential_decay(peak, config.lr_step_every, 0.1, staircase=True)
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, config.warmup_steps,
                                              max(total_steps, config.warmup_steps + 1))
  return optax.constant_schedule(peak)


def plateau_rule(config: OptimizerConfig) -> optax.GradientTransformationExtraArgs:
  """Divide by 10 when the validation error stops improving, at most `max_drops` times.

  Fed once per evaluation with the top-1 error; its state (the current scale) is part of
  the train state and of every checkpoint.
  """
  return contrib.reduce_on_plateau(factor=0.1, patience=config.plateau_patience, rtol=0.0,
                                   atol=1e-4, min_scale=0.1 ** config.max_drops)


def weight_mask(params):
  """True for weights (kernels), False for biases."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) != 'bias', params)


def paper_sgd(learning_rate, momentum: float, weight_decay: float, decay_mask=None):
  """v <- momentum v - lr (weight_decay w + grad); w <- w + v."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=decay_mask),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum))


def make(config: OptimizerConfig, params) -> optax.GradientTransformation:
  """The paper's SGD with the learning rate as an injected hyperparameter.

  The train step sets `opt_state.hyperparams['learning_rate']` every step from the
  schedule and the plateau scale, so the rate lives inside the velocity as in the paper.
  """
  mask = None if config.decay_biases else weight_mask(params)
  return optax.inject_hyperparams(paper_sgd, static_args=('momentum', 'weight_decay', 'decay_mask'))(
      learning_rate=config.learning_rate, momentum=config.momentum,
      weight_decay=config.weight_decay, decay_mask=mask)
