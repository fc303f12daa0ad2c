"""Evaluation: 1-crop or the paper's 10 crops, top-1/top-5, every example counted once.

Batches come padded with a mask (input_pipeline.eval_batches); the step returns sums of
correct predictions over real examples only, and the host adds them up, so the counts
are exact whatever the batch size and number of processes.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable

import jax
import jax.numpy as jnp

from alexnet_jax import parallel
from alexnet_jax.config import UserError


def crop_log_probabilities(forward, params, images, normalizer) -> jax.Array:
  """Log of the softmax averaged over crops -> (B, classes).

  images: uint8 squares (B, R, R, 3) that device_augment.SquareAugmenter crops here, or
  crops (B, C, S, S, 3) from the host (preprocess.Normalizer). Computed in log space
  (logsumexp over the crops' log-softmax), so a confidently wrong prediction gets its
  true cross-entropy instead of underflowing to log(0).
  """
  inputs = normalizer.eval_inputs(images)
  batch, crops = inputs.shape[:2]
  flat = inputs.reshape((batch * crops,) + inputs.shape[2:])
  log_probs = jax.nn.log_softmax(forward(params, flat).astype(jnp.float32))
  return jax.nn.logsumexp(log_probs.reshape(batch, crops, -1), axis=1) - jnp.log(crops)


def make_eval_step(model_config, mesh, normalizer) -> Callable:
  """eval_step(params, batch) -> sums of correct top-1, top-5, loss and examples."""
  forward = parallel.sharded_forward(model_config, mesh)

  @jax.jit
  def eval_step(params, batch):
    log_probs = crop_log_probabilities(forward, params, batch['images'], normalizer)
    return counts(log_probs, batch['labels'], batch['mask'])

  return eval_step


def counts(log_probs: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
  """Sums over a batch's real examples (mask True): correct top-1, correct top-5 (the label
  among the 5 most probable classes), the loss, the examples."""
  top5 = jax.lax.top_k(log_probs, min(5, log_probs.shape[-1]))[1]
  hit1 = (top5[:, 0] == labels) & mask
  hit5 = jnp.any(top5 == labels[:, None], axis=-1) & mask
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return {'correct1': hit1.sum(), 'correct5': hit5.sum(),
          'loss': jnp.where(mask, nll, 0.0).sum(), 'examples': mask.sum()}


def evaluate(eval_step, params, batches: Iterable[dict]) -> dict:
  """Runs eval_step over every batch; returns top1, top5, loss, num_examples."""
  totals = None
  for batch in batches:
    with jax.transfer_guard('disallow'):  # batches and parameters are on the devices
      sums = eval_step(params, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  examples = int(totals['examples'])
  if examples == 0:
    raise UserError('the evaluation split has no examples.')
  return {'top1': float(totals['correct1']) / examples,
          'top5': float(totals['correct5']) / examples,
          'loss': float(totals['loss']) / examples, 'num_examples': examples}


def result_path(workdir: str, split: str, step: int, crops: int = 1) -> str:
  """WORKDIR/eval/<split>_step<N>.json for 1 crop, <split>_step<N>_crops<C>.json for C."""
  name = ''.join(c if c.isalnum() else '_' for c in split).strip('_')
  suffix = f'_crops{crops}' if crops != 1 else ''
  return os.path.join(workdir, 'eval', f'{name}_step{step}{suffix}.json')


def write_result(workdir: str, split: str, step: int, result: dict) -> str:
  """Writes the result to result_path (whole or not at all) and returns the path."""
  path = result_path(workdir, split, step, result.get('crops', 1))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(f'{path}.tmp', 'w') as f:
    json.dump(dict(result, step=step, split=split), f, indent=2, sort_keys=True)
  os.replace(f'{path}.tmp', path)
  return path


def result_summary(result: dict) -> str:
  return (f"top-1 {100 * result['top1']:.2f}% (error {100 * (1 - result['top1']):.2f}%), "
          f"top-5 {100 * result['top5']:.2f}% (error {100 * (1 - result['top5']):.2f}%), "
          f"{result['num_examples']} examples, {result.get('crops', '?')} crop(s)")
