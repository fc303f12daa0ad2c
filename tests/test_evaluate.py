"""Evaluation's rules, each checked fast: top-5 counts, masks, and the net in inference mode."""

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import evaluate
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import preprocess
from tests import meshes


def test_top5_counts_a_label_among_the_five_most_probable_and_masked_examples_not_at_all():
  # Per example, classes 0..9 ranked by these log-probabilities: class 9 first, 0 last.
  log_probs = jnp.log(jax.nn.softmax(jnp.tile(jnp.arange(10.0), (5, 1))))
  labels = jnp.array([9, 5, 4, 0, 9])      # ranks 1, 5, 6, 10, 1
  mask = jnp.array([True, True, True, True, False])
  counts = jax.device_get(evaluate.counts(log_probs, labels, mask))
  assert (counts['correct1'], counts['correct5'], counts['examples']) == (1, 2, 4)
  expected = -np.asarray(log_probs)[np.arange(4), np.asarray(labels[:4])].sum()
  np.testing.assert_allclose(counts['loss'], expected, rtol=1e-6)


def test_evaluation_runs_the_net_in_inference_mode_without_dropout():
  config, mesh = meshes.TINY, meshes.mesh(1, 1)
  params = jax.device_put(meshes.host_params(), parallel.param_shardings(config, mesh))
  images = np.random.default_rng(0).integers(0, 256, (4, 1, 67, 67, 3), np.uint8)
  normalizer = preprocess.Normalizer(preprocess.CHANNEL_MEAN)
  forward = parallel.sharded_forward(config, mesh)
  with jax.set_mesh(mesh):
    got = evaluate.crop_log_probabilities(forward, params, images, normalizer)
  net = model_lib.AlexNet(config)
  inputs = normalizer(images)[:, 0]
  logits = {mode: net.apply({'params': meshes.host_params()}, inputs, train=mode,
                            dropout_rng=jax.random.key(0)) for mode in (False, True)}
  np.testing.assert_allclose(got, jax.nn.log_softmax(logits[False]), atol=1e-5)
  assert not np.allclose(got, jax.nn.log_softmax(logits[True]), atol=1e-3)  # dropout differs
