"""What the input pipeline must yield, read straight from the prepared files instead.

The demo's splits are one shard each. With a shuffle buffer of 1 and centre crops
(KNOWN_ORDER) the training stream is then the split in file order, epoch after epoch,
so step N of batch B must train on positions N*B .. N*B+B-1 (modulo the split's size).
Expectations built here share no code with input_pipeline but the per-image crop.
"""

import functools

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import augment

KNOWN_ORDER = dict(shuffle_buffer=1, augment='none')


@functools.cache
def file_order(cfg, split: str) -> tuple[list[bytes], np.ndarray]:
  """(encoded images, int32 labels) of a split, in the order its one file holds them."""
  builder = tfds.builder(cfg.dataset, data_dir=cfg.data_dir)
  assert len(builder.info.splits[split].file_instructions) == 1, 'one shard: one order'
  records = list(builder.as_dataset(split, shuffle_files=False,
                                    decoders={'image': tfds.decode.SkipDecoding()})
                 .as_numpy_iterator())
  return [r['image'] for r in records], np.array([r['label'] for r in records], np.int32)


def train_batch(cfg, step: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images (batch, S, S, 3) and labels that step `step` must train on."""
  assert (cfg.shuffle_buffer, cfg.augment) == (1, 'none'), 'only this stream has a known order'
  images, labels = file_order(cfg, cfg.train_split)
  positions = (step * batch + np.arange(batch)) % len(labels)
  # The demo stores JPEGs; the centre crop ignores its seed.
  crops = [augment.train_image(tf.constant(images[p]), tf.constant([0, 0], tf.int64), cfg, True)
           for p in positions]
  return np.stack(crops), labels[positions]


def eval_examples(cfg) -> tuple[np.ndarray, np.ndarray]:
  """uint8 crops (N, C, S, S, 3) and labels of every example of the eval split, once."""
  images, labels = file_order(cfg, cfg.eval_split)
  return np.stack([augment.eval_images(tf.constant(x), cfg, True) for x in images]), labels
