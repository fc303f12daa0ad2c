"""TFDS data for AlexNet: per-process datasets and global batches on the mesh.

The host decodes and augments (augment.py) and hands uint8 to the accelerator, where
`alexnet_jax.preprocess` adds the PCA colour noise and subtracts the mean (float32,
0..255 scale). Datasets come prepared by tfds_data.py.

Batch layout (what train/eval code receives, global jax.Arrays split over 'data'):
  train: {'images': uint8 (B, S, S, 3), 'labels': int32 (B,)}
  eval:  {'images': uint8 (B, C, S, S, 3) with C = eval_crops (1 or 10),
          'labels': int32 (B,), 'mask': bool (B,)}; padded examples have mask False.
  Every eval example appears exactly once with mask True, whatever the batch size and
  the number of processes.

Determinism and resumption: the training stream of each reader (a process, or the
processes of a tower pair) is its part of the split (tfds.even_splits), epoch after
epoch; epoch e's file order and shuffle are seeded by (seed, e), and every random choice
of an example is a stateless op seeded by (seed, the example's position in the stream).
So the same seed gives the same batches, and a resumed stream (`start_step=N`, or
`start_position`: the examples already read) replays only the records (not the decoding)
of the epoch it resumes in.
"""

from __future__ import annotations

import collections
import math
import os
import re
import time
from typing import Iterable, Iterator, Sequence

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import parallel
from alexnet_jax import preprocess
from alexnet_jax.config import DataConfig, UserError
from alexnet_jax.data import augment
from alexnet_jax.data import demo_data
from alexnet_jax.data import tfds_data

AUTOTUNE = tf.data.AUTOTUNE
# Re-exported for callers that only import the pipeline.
check_sources = tfds_data.check_sources
prepare = tfds_data.prepare
dataset_info = tfds_data.dataset_info


# ----------------------------------------------------------------------------------
# Per-process datasets (tf.data, host numpy batches).


def _process(process_index, process_count) -> tuple[int, int]:
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def _process_split(split: str, process_index: int, process_count: int):
  """This process's part of the split; the parts partition it exactly."""
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def _records(builder, split, shuffle_seed=None) -> tf.data.Dataset:
  """Serialized examples of a (sub)split; file order shuffled when a seed is given."""
  instructions = builder.info.splits[split].file_instructions
  if not instructions:  # e.g. more processes than examples
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


def _parser(builder, keep_file_name: bool = False):
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


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def _epoch_seed(seed: int, epoch) -> tf.Tensor:
  # Distinct for every (seed, epoch) pair a run can reach.
  return tf.cast(seed, tf.int64) * (2**31) + tf.cast(epoch, tf.int64)


def train_dataset(cfg: DataConfig, local_batch_size: int, *, start_step: int = 0,
                  start_position: int | None = None, process_index: int | None = None,
                  process_count: int | None = None) -> tf.data.Dataset:
  """This process's endless training batches from `start_step` on (numpy-ready).

  Yields {'images': uint8 (b, S, S, 3), 'labels': int32 (b,)} with b = local_batch_size.
  Batches run across epoch boundaries; step N holds stream positions N*b .. N*b+b-1.
  start_position (examples of this stream already read) wins over start_step.
  """
  cfg.validate()
  builder = tfds_data.prepared_builder(cfg)
  index, count = _process(process_index, process_count)
  split = _process_split(cfg.train_split, index, count)
  num_examples = builder.info.splits[split].num_examples
  if num_examples == 0:
    raise UserError(f'{cfg.train_split} has no examples for process {index} of {count}.')
  position = start_step * local_batch_size if start_position is None else start_position
  first_epoch, offset = divmod(position, num_examples)
  parse, is_jpeg = _parser(builder), tfds_data.is_jpeg(builder)

  def epoch_records(epoch):
    seed = _epoch_seed(cfg.seed, epoch)
    records = _records(builder, split, shuffle_seed=seed).shuffle(cfg.shuffle_buffer, seed=seed)
    records = records.enumerate().map(lambda i, r: (epoch * num_examples + i, r))
    # Resuming: drop what the first epoch already yielded, before anything is decoded.
    return records.skip(tf.where(epoch == first_epoch, tf.constant(offset, tf.int64),
                                tf.constant(0, tf.int64)))

  def example(position, serialized):
    parsed = parse(serialized)
    # Unique per example of every process's stream, so skipping is exact.
    seed = tf.stack([tf.cast(cfg.seed, tf.int64), position * count + index])
    return {'images': augment.train_image(parsed['image'], seed, cfg, is_jpeg),
            'labels': parsed['label']}

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_records)
  ds = ds.map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return ds.with_options(_options()).prefetch(AUTOTUNE)


def eval_steps(cfg: DataConfig, local_batch_size: int, process_count: int | None = None) -> int:
  """Batches every process runs: enough for the largest part of the split."""
  builder = tfds_data.prepared_builder(cfg)
  _, count = _process(None, process_count)
  parts = [_process_split(cfg.eval_split, i, count) for i in range(count)]
  largest = max(builder.info.splits[p].num_examples for p in parts)
  return max(1, math.ceil(largest / local_batch_size))


def eval_dataset(cfg: DataConfig, local_batch_size: int, *, process_index: int | None = None,
                 process_count: int | None = None,
                 keep_file_name: bool = False) -> tf.data.Dataset:
  """This process's evaluation batches, padded so that all processes run eval_steps.

  Yields {'images': uint8 (b, C, S, S, 3), 'labels': int32 (b,), 'mask': bool (b,)}
  (and 'file_name' when asked). Real examples have mask True and appear once.
  """
  cfg.validate()
  builder = tfds_data.prepared_builder(cfg)
  index, count = _process(process_index, process_count)
  split = _process_split(cfg.eval_split, index, count)
  num_examples = builder.info.splits[split].num_examples
  padding = eval_steps(cfg, local_batch_size, count) * local_batch_size - num_examples
  parse, is_jpeg = _parser(builder, keep_file_name), tfds_data.is_jpeg(builder)

  def example(serialized):
    parsed = parse(serialized)
    out = {'images': augment.eval_images(parsed['image'], cfg, is_jpeg),
           'labels': parsed['label'], 'mask': tf.constant(True)}
    if keep_file_name:
      out['file_name'] = parsed['file_name']
    return out

  ds = _records(builder, split).map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
  blank = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(padding))
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return ds.with_options(_options()).prefetch(AUTOTUNE)


# ----------------------------------------------------------------------------------
# Global batches on the mesh.


def data_readers(mesh) -> tuple[int, int]:
  """(index, count) of this process among the processes that read distinct examples.

  Processes whose devices hold the same rows of the mesh's 'data' axis need the same
  examples: the two processes of a tower pair (one process per GPU, tower=2) read one
  part of the data together.
  """
  rows = collections.defaultdict(set)
  for (row, _), device in np.ndenumerate(mesh.devices):
    rows[device.process_index].add(row)
  groups = sorted({frozenset(r) for r in rows.values()}, key=min)
  return groups.index(frozenset(rows[jax.process_index()])), len(groups)


def _reader_batch(global_batch_size: int, mesh) -> tuple[int, int, int]:
  """(batch this reader reads, reader index, reader count).

  Each reader holds whole rows of the 'data' axis, and the batch is a multiple of that
  axis (config.Experiment.check_batches), so it splits evenly over the readers.
  """
  index, count = data_readers(mesh)
  return global_batch_size // count, index, count


def _to_global(batches: Iterable[dict], mesh, count: int) -> Iterator[dict]:
  """Host numpy batches -> global jax.Arrays split over 'data' (transfers start now)."""
  sharding = parallel.batch_sharding(mesh)
  for batch in batches:
    yield {key: jax.make_array_from_process_local_data(
               sharding, value, (value.shape[0] * count,) + value.shape[1:])
           for key, value in batch.items()}


def prefetch(iterator: Iterable, size: int = 2) -> Iterator:
  """Keeps `size` items in flight: device transfers overlap the running step."""
  queue = collections.deque()
  for item in iterator:
    queue.append(item)
    if len(queue) >= size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def train_batches(cfg: DataConfig, global_batch_size: int, mesh, start_step: int = 0,
                  start_examples: int | None = None) -> Iterator[dict]:
  """Endless {'images': uint8 (B, S, S, 3), 'labels': int32 (B,)} global arrays.

  The batch of step N is the same whether the run started at 0 or resumed at N.
  start_examples (examples the run has seen, over all readers) wins over start_step.
  """
  local, index, count = _reader_batch(global_batch_size, mesh)
  position = None if start_examples is None else start_examples // count  # each reads a part
  ds = train_dataset(cfg, local, start_step=start_step, start_position=position,
                     process_index=index, process_count=count)
  return prefetch(_to_global(ds.as_numpy_iterator(), mesh, count))


def eval_batches(cfg: DataConfig, global_batch_size: int, mesh) -> Iterator[dict]:
  """{'images': uint8 (B, C, S, S, 3), 'labels': int32 (B,), 'mask': bool (B,)}.

  eval_steps(cfg, B // readers, readers) batches, the same on every process (readers:
  data_readers(mesh)[1]); count an example only where mask is True.
  """
  local, index, count = _reader_batch(global_batch_size, mesh)
  ds = eval_dataset(cfg, local, process_index=index, process_count=count)
  return prefetch(_to_global(ds.as_numpy_iterator(), mesh, count))


# ----------------------------------------------------------------------------------
# Means and single images.


def mean_image_path(cfg: DataConfig, workdir: str | None = None) -> str:
  """Where the paper's mean image of cfg.train_split (R x R) is kept."""
  # 'train[:90%]' -> 'train_to90pct', 'train[90%:]' -> 'train_90pctto': one file per slice.
  split = cfg.train_split.replace('%', 'pct').replace(':', 'to')
  split = re.sub(r'[^A-Za-z0-9]+', '_', split).strip('_')
  name = f'mean_image_{cfg.dataset}_{split}_{cfg.resize_size}px.npy'
  return os.path.join(workdir or tfds_data.tfds_builder(cfg).data_dir, name)


def compute_mean_image(cfg: DataConfig, max_examples: int | None = None,
                       batch_size: int = 256) -> np.ndarray:
  """Mean over the training split of the R x R squares (the paper's 256 x 256 images)."""
  builder = tfds_data.prepared_builder(cfg)
  is_jpeg, parse = tfds_data.is_jpeg(builder), _parser(builder)
  ds = _records(builder, cfg.train_split)
  if max_examples:
    ds = ds.take(max_examples)
  ds = ds.map(lambda r: augment.to_uint8(augment.central_square(parse(r)['image'], cfg.resize_size, is_jpeg)),
              num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
  total, count = np.zeros((cfg.resize_size, cfg.resize_size, 3), np.float64), 0
  for batch in ds.as_numpy_iterator():
    total += batch.sum(axis=0, dtype=np.float64)
    count += batch.shape[0]
  return (total / max(count, 1)).astype(np.float32)


def mean_for(cfg: DataConfig, workdir: str | None = None) -> np.ndarray:
  """The mean the train step subtracts: (3,) for 'channel', (S, S, 3) for 'pixel'.

  The pixel mean is the central S x S of the mean R x R image (as cuda-convnet2 did);
  it is computed once from the training split and kept as .npy in workdir (or, without
  one, next to the prepared data).
  """
  if cfg.mean == 'channel':
    return preprocess.CHANNEL_MEAN
  path = mean_image_path(cfg, workdir)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path, 'rb') as f:
      mean = np.load(f)
  else:
    logging.info('Computing the mean image of %s %s into %s', cfg.dataset, cfg.train_split, path)
    mean = compute_mean_image(cfg)
    tf.io.gfile.makedirs(os.path.dirname(path))
    temporary = f'{path}.tmp{os.getpid()}'
    with tf.io.gfile.GFile(temporary, 'wb') as f:
      np.save(f, mean)
    tf.io.gfile.rename(temporary, path, overwrite=True)
  start = (mean.shape[0] - cfg.image_size) // 2
  return mean[start:start + cfg.image_size, start:start + cfg.image_size]


def normalizer_for(cfg: DataConfig, workdir: str | None = None) -> preprocess.Normalizer:
  """What the train and eval steps do to the uint8 batches on the device."""
  return preprocess.Normalizer(mean_for(cfg, workdir),
                               preprocess.CHANNEL_STD if cfg.standardize else None)


def load_images_for_predict(paths: Sequence[str], cfg: DataConfig) -> np.ndarray:
  """uint8 (N, C, S, S, 3): the eval crops (cfg.eval_crops) of each image file.

  Reads JPEG, PNG, GIF or BMP whatever the file name says. Raises UserError naming the
  file that is missing or not an image.
  """
  out = []
  for path in paths:
    if not tf.io.gfile.exists(path):
      raise UserError(f'no such image file: {path}')
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = f.read()
    try:
      # JPEGs take the evaluation's own decoder; anything else is decoded whole.
      is_jpeg = data[:3] == b'\xff\xd8\xff'
      out.append(augment.eval_images(tf.constant(data), cfg, is_jpeg).numpy())
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
      raise UserError(f'{path} is not an image TensorFlow can decode '
                       f'(JPEG, PNG, GIF or BMP): {e.message.splitlines()[0]}') from None
  return np.stack(out)


# ----------------------------------------------------------------------------------
# Throughput benchmark.


def benchmark(cfg: DataConfig, batch_size: int = 256, seconds: float = 10.0, repeats: int = 3,
              mesh=None) -> list[tuple[float, float]]:
  """Training-pipeline throughput, per repeat: (images/s, images per CPU-second).

  Host uint8 batches from tf.data, made global jax.Arrays on `mesh` if given. The CPU
  figure counts every thread of this process: a per-core rate that holds even when
  other work shares the machine.
  """
  results = []
  for repeat in range(repeats):
    if mesh is None:
      batches = train_dataset(cfg, batch_size, start_step=repeat * 1000).as_numpy_iterator()
    else:
      batches = train_batches(cfg, batch_size, mesh, start_step=repeat * 1000)
    for _ in range(3):  # warm up: fill the shuffle buffer and the prefetch queues
      jax.block_until_ready(next(batches))
    start, cpu_start, images = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
      jax.block_until_ready(next(batches))
      images += batch_size
    results.append((images / (time.perf_counter() - start),
                    images / (time.process_time() - cpu_start)))
    del batches
  return results


def main(argv=None) -> None:
  import argparse  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description='Input pipeline throughput (training).')
  parser.add_argument('--benchmark', action='store_true', required=True)
  parser.add_argument('--dataset', default=tfds_data.IMAGENET)
  parser.add_argument('--data_dir', help='a prepared TFDS dir; default: write demo data')
  parser.add_argument('--manual_dir')
  parser.add_argument('--train_split', default='train')
  parser.add_argument('--image_size', type=int, default=227)
  parser.add_argument('--augment', default='paper')
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--images_per_class', type=int, default=250,
                      help='demo data only: 8 classes of ~300..480 px JPEGs')
  parser.add_argument('--to_device', action='store_true',
                      help='also build global jax.Arrays on a one-device mesh')
  args = parser.parse_args(argv)
  data_dir, manual_dir = args.data_dir, args.manual_dir
  if data_dir is None:
    root = tempfile.mkdtemp(prefix='alexnet_bench_')
    data_dir, manual_dir = os.path.join(root, 'tfds'), os.path.join(root, 'manual')
    demo_data.write_demo_imagenet(manual_dir, args.images_per_class, oddities=False)
  cfg = DataConfig(dataset=args.dataset, data_dir=data_dir, manual_dir=manual_dir,
                   train_split=args.train_split, image_size=args.image_size,
                   augment=args.augment, shuffle_buffer=1000)
  prepare(cfg)
  mesh = jax.make_mesh((1, 1), ('data', 'tower'), devices=jax.devices()[:1]) if args.to_device else None
  results = benchmark(cfg, args.batch_size, args.seconds, args.repeats, mesh)
  cores = len(os.sched_getaffinity(0))
  wall = float(np.median([r[0] for r in results]))
  per_cpu = float(np.median([r[1] for r in results]))
  print(f'augment={cfg.augment} image_size={cfg.image_size} resize={cfg.resize_size} '
        f'batch={args.batch_size} to_device={args.to_device}: runs '
        f'{", ".join(f"{r[0]:.0f}" for r in results)} images/s; median {wall:.0f} images/s '
        f'on {cores} cores ({wall / cores:.0f} per core); {per_cpu:.0f} images per '
        f'CPU-second of this process.')


if __name__ == '__main__':
  main()
