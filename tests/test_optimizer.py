"""The paper's update rule and the schedules, against hand computation."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import optimizer
from alexnet_jax import train
from tests import meshes

PARAMS = {'layer': {'kernel': jnp.array([1.0, -2.0, 0.5]), 'bias': jnp.array([0.3])}}
GRADS = [{'layer': {'kernel': jnp.array([0.1, 0.2, -0.3]) * (i + 1),
                    'bias': jnp.array([0.05 * (i + 1)])}} for i in range(5)]
RATES = [0.01, 0.01, 0.001, 0.001, 0.001]  # a drop by 10 after two steps


def _run(tx, rates=None):
  params, state, trajectory = PARAMS, tx.init(PARAMS), []
  for i, grads in enumerate(GRADS):
    if rates is not None:
      state.hyperparams['learning_rate'] = jnp.asarray(rates[i])
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(params)
  return trajectory


def test_paper_update_rule_across_a_learning_rate_drop():
  # v <- 0.9 v - 0.0005 lr w - lr g ; w <- w + v (weights), biases without decay.
  w, b = np.array([1.0, -2.0, 0.5]), np.array([0.3])
  vw, vb = np.zeros(3), np.zeros(1)
  expected = []
  for lr, g in zip(RATES, GRADS):
    vw = 0.9 * vw - 0.0005 * lr * w - lr * np.asarray(g['layer']['kernel'])
    vb = 0.9 * vb - lr * np.asarray(g['layer']['bias'])
    w, b = w + vw, b + vb
    expected.append((w.copy(), b.copy()))
  got = _run(optimizer.make(config_lib.OptimizerConfig(), PARAMS), RATES)
  for (want_w, want_b), params in zip(expected, got):
    np.testing.assert_allclose(params['layer']['kernel'], want_w, rtol=1e-6)
    np.testing.assert_allclose(params['layer']['bias'], want_b, rtol=1e-6)


def test_plain_optax_sgd_differs_after_the_drop():
  # optax.sgd keeps lr outside the velocity: identical until the drop, different after.
  ours = _run(optimizer.make(config_lib.OptimizerConfig(weight_decay=0.0), PARAMS), RATES)
  theirs = _run(optax.inject_hyperparams(optax.sgd)(learning_rate=0.01, momentum=0.9), RATES)
  np.testing.assert_allclose(ours[1]['layer']['kernel'], theirs[1]['layer']['kernel'], rtol=1e-6)
  assert not np.allclose(ours[2]['layer']['kernel'], theirs[2]['layer']['kernel'], rtol=1e-4)


def test_decay_biases_flag():
  opt_config = config_lib.OptimizerConfig(decay_biases=True, momentum=0.0)
  tx = optimizer.make(opt_config, PARAMS)
  state = tx.init(PARAMS)
  zero = {'layer': {'kernel': jnp.zeros(3), 'bias': jnp.zeros(1)}}
  updates, _ = tx.update(zero, state, PARAMS)
  np.testing.assert_allclose(updates['layer']['bias'], [-0.01 * 0.0005 * 0.3], rtol=1e-6)


def test_plateau_rule_divides_by_ten_at_most_three_times():
  opt_config = config_lib.OptimizerConfig(plateau_patience=1)
  rule = optimizer.plateau_rule(opt_config)
  state = rule.init(PARAMS)
  scales = []
  for error in [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]:
    _, state = rule.update(updates={}, state=state, value=error)
    scales.append(float(state.scale))
  np.testing.assert_allclose(scales[:3], [1, 1, 0.1], rtol=1e-6)  # a drop after no progress
  assert min(scales) == pytest.approx(1e-3)  # never below 0.001: three drops
  assert sorted(set(np.round(scales, 6)), reverse=True) == [1, 0.1, 0.01, 0.001]


def test_schedules():
  step = optimizer.schedule(config_lib.OptimizerConfig(schedule='step', lr_step_every=10), 128, 100)
  assert float(step(9)) == pytest.approx(0.01) and float(step(10)) == pytest.approx(0.001)
  cosine = optimizer.schedule(
      config_lib.OptimizerConfig(schedule='cosine', warmup_steps=10, linear_scaling=True),
      1024, 110)
  assert float(cosine(10)) == pytest.approx(0.08)  # 0.01 x 1024 / 128 at the end of warm-up
  assert float(cosine(5)) == pytest.approx(0.04)
  assert float(cosine(110)) == pytest.approx(0.0, abs=1e-7)
  with pytest.raises(ValueError, match='lr_step_every'):
    config_lib.OptimizerConfig(schedule='step').validate()


def test_evaluations_feed_the_plateau_rule_the_error_so_progress_keeps_the_rate():
  """The paper: divide by 10 when the validation error stops improving (train.after_eval)."""
  opt_config = config_lib.OptimizerConfig(plateau_patience=2)
  state = train.TrainState(step=jnp.int32(0), params=PARAMS, opt_state=None,
                           plateau=optimizer.plateau_rule(opt_config).init(PARAMS))
  scales = []
  for top1 in (0.1, 0.2, 0.3, 0.4, 0.4, 0.4):  # the error falls, then stays flat twice
    state = train.after_eval(opt_config, state, top1, meshes.mesh(1, 1))
    scales.append(float(state.plateau.scale))
  np.testing.assert_allclose(scales, [1, 1, 1, 1, 1, 0.1], rtol=1e-6)
