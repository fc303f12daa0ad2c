"""Where a resumed run continues: the examples seen, which a change of batch size keeps.

A checkpoint records the global batch size and how many training examples the run had
seen (checkpoints.Checkpoints.progress). A run with the same batch continues at step N,
example N * batch. One with another batch would replay or skip data if it counted steps:
it is refused unless allowed, and then continues after the examples seen.
"""

from __future__ import annotations

from absl import logging

from alexnet_jax.config import UserError


class BatchChangeError(UserError):
  """Resuming with another global batch size, not allowed by the flags."""


def examples_seen(saved: dict, step: int, batch_size: int, allow_batch_change: bool) -> int:
  """Training examples seen by the checkpoint of `step`, saved progress `saved`.

  Checkpoints written before progress was recorded count step * batch_size.
  """
  saved_batch = saved.get('batch_size', batch_size)
  examples = saved.get('examples_seen', step * saved_batch)
  if saved_batch == batch_size:
    return examples
  if not allow_batch_change:
    raise BatchChangeError(
        f'the checkpoint of step {step} was trained with --batch_size={saved_batch}, this run '
        f'has --batch_size={batch_size}: counting steps would replay or skip examples. Pass '
        f'--allow_batch_change to continue after the {examples:,} examples seen, or resume '
        f'with --batch_size={saved_batch}.')
  logging.warning('Resuming step %d with --batch_size=%d (the checkpoint\'s was %d): the input '
                  'continues after the %s examples seen; the steps that follow take %d each.',
                  step, batch_size, saved_batch, f'{examples:,}', batch_size)
  return examples


def end_step(step: int, examples: int, batch_size: int, epochs: float,
             steps_per_epoch: int) -> int:
  """The last step for `epochs` epochs of steps_per_epoch * batch_size examples, from step."""
  remaining = epochs * steps_per_epoch * batch_size - examples
  return step + max(0, round(remaining / batch_size))
