"""tf.data over the record files of a prepared TFDS dataset (the source or the store).

Each reader (a process, or the processes of a tower pair, which read the same examples)
reads its part of a split: the parts (tfds.even_splits) partition the split exactly.
"""

from __future__ import annotations

from alexnet_jax.config import UserError
from alexnet_jax.data import tfds_data
from alexnet_jax.data.tensorflow_setup import tf, tfds

AUTOTUNE = tf.data.AUTOTUNE


def part(split: str, index: int, count: int) -> str:
  """Reader `index`'s part of the split, of `count` readers."""
  if count == 1:
    return split
  return tfds.even_splits(split, n=count, drop_remainder=False)[index]


def records(builder, split: str, shuffle_seed=None) -> tf.data.Dataset:
  """Serialized examples of a (sub)split; file order shuffled when a seed is given."""
  instructions = builder.info.splits[split].file_instructions
  if not instructions:  # e.g. more readers than examples
    return tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))
  if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
    raise UserError(f'{builder.name} is stored as {builder.info.file_format}; this '
                    'pipeline reads tfrecord (TFDS\'s default).')
  files = tf.data.Dataset.from_tensor_slices((
      [i.filename for i in instructions],
      tf.constant([i.skip for i in instructions], tf.int64),
      tf.constant([i.take for i in instructions], tf.int64)))
  if shuffle_seed is not None:
    files = files.shuffle(len(instructions), seed=shuffle_seed)
  return files.interleave(
      lambda name, skip, take: tf.data.TFRecordDataset(name).skip(skip).take(take),
      cycle_length=min(16, len(instructions)), block_length=1,
      num_parallel_calls=AUTOTUNE, deterministic=True)


def parser(builder, keep_file_name: bool = False):
  """serialized -> {'image': encoded bytes, 'label': int32 (, 'file_name')}."""
  image_key, label_key = tfds_data.label_keys(builder)
  features = builder.info.features

  def parse(serialized):
    example = features.deserialize_example(
        serialized, decoders={image_key: tfds.decode.SkipDecoding()})
    parsed = {'image': example[image_key], 'label': tf.cast(example[label_key], tf.int32)}
    if keep_file_name:
      parsed['file_name'] = example['file_name']
    return parsed

  return parse


def options() -> tf.data.Options:
  """Deterministic, with the map functions run in parallel."""
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options
