"""TFDS data for AlexNet: per-process datasets and global batches on the mesh.

Two inputs (DataConfig.store):
  'jpeg', 'raw': the prepared store of R x R squares (square_store.py). The host only
      reads records (and decodes the JPEG squares); the crop, flip, PCA colour noise and
      mean subtraction happen in the jitted step (alexnet_jax/device_augment.py).
  'none': the full-size images. The host decodes and crops (augment.py); the device adds
      the PCA colour noise and subtracts the mean (alexnet_jax/preprocess.py).
Either way the accelerator gets uint8 and makes float32 on the 0..255 scale. Datasets
come prepared by tfds_data.py (the source) and square_store.py (the store).

Batch layout (what train/eval code receives, global jax.Arrays split over 'data'):
  train: {'images': uint8 (B, R, R, 3) squares, or (B, S, S, 3) host crops,
          'labels': int32 (B,)}
  eval:  {'images': uint8 (B, R, R, 3) squares, or (B, C, S, S, 3) host crops with
          C = eval_crops (1 or 10), 'labels': int32 (B,), 'mask': bool (B,)};
          padded examples have mask False.
  Every eval example appears exactly once with mask True, whatever the batch size and
  the number of processes.

Determinism and resumption: the training stream of each reader (a process, or the
processes of a tower pair) is its part of the split (tfds.even_splits), epoch after
epoch; epoch e's file order and shuffle are seeded by (seed, e), and every random choice
of an example is a stateless op seeded by (seed, the example's position in the stream).
So the same seed gives the same batches, and a resumed stream (`start_step=N`, or
`start_position`: the examples already read) replays only the records (not the decoding)
of the epoch it resumes in. The store's reader (store_reader.py) permutes the part per
epoch, seeded by (seed, e), and replays nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import math
import os
import re
import time
from typing import Iterable, Iterator, NamedTuple, Sequence

from absl import logging
import jax
import numpy as np

from alexnet_jax import device_augment
from alexnet_jax import parallel
from alexnet_jax import preprocess
from alexnet_jax.config import DataConfig, UserError
from alexnet_jax.data import augment
from alexnet_jax.data import demo_data
from alexnet_jax.data import square_store
from alexnet_jax.data import store_reader
from alexnet_jax.data import tfds_data
from alexnet_jax.data.tensorflow_setup import tf, tfds

AUTOTUNE = tf.data.AUTOTUNE


def _store_ready(cfg: DataConfig) -> bool:
  return cfg.store != 'none' and square_store.is_prepared(cfg)


def check_sources(cfg: DataConfig) -> None:
  """MissingDataError, before any long work, if the input can be neither read nor made."""
  if not _store_ready(cfg):  # a prepared store needs no source
    tfds_data.check_sources(cfg)


def prepare(cfg: DataConfig) -> list[str]:
  """Prepares the source dataset and the store (unless store='none'), if not there yet.

  Returns the source files the source builder skipped.
  """
  skipped = [] if _store_ready(cfg) else tfds_data.prepare(cfg)
  if cfg.store != 'none':
    square_store.prepare(cfg)
  return skipped


def check_store(cfg: DataConfig) -> None:
  """MissingStoreError (one line naming the command that prepares it) unless it is there."""
  if cfg.store != 'none':
    square_store.open_store(cfg)


def _builder(cfg: DataConfig):
  """What the run reads: the store of squares, or the full-size source dataset."""
  return tfds_data.prepared_builder(cfg) if cfg.store == 'none' else square_store.open_store(cfg)


def dataset_info(cfg: DataConfig) -> tuple[int, int, int, list[str]]:
  """(num_classes, num_train_examples, num_eval_examples, class_names) of the splits.

  From the store if it is prepared, else from the source (the same classes and splits).
  """
  return tfds_data.dataset_info(cfg, square_store.open_store(cfg) if _store_ready(cfg) else None)


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
  """This process's endless training batches of the full-size images (numpy-ready).

  Yields {'images': uint8 (b, S, S, 3) host crops, 'labels': int32 (b,)} with
  b = local_batch_size (the store's batches come from host_batches).
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


def host_batches(cfg: DataConfig, local_batch_size: int, *, start_step: int = 0,
                 start_position: int | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict]:
  """This process's endless training batches, as numpy, from `start_step` on.

  {'images': uint8 (b, R, R, 3) squares of the store, or (b, S, S, 3) host crops of the
  full-size images, 'labels': int32 (b,)}. The store is read straight into the batches
  (store_reader.py: its stream is a permutation of this process's part per epoch); the
  full-size images come from train_dataset. Step N holds stream positions N*b .. N*b+b-1;
  start_position (examples of this stream already read) wins over start_step.
  """
  if cfg.store == 'none':
    return train_dataset(cfg, local_batch_size, start_step=start_step,
                         start_position=start_position, process_index=process_index,
                         process_count=process_count).as_numpy_iterator()
  cfg.validate()
  builder = _builder(cfg)
  index, count = _process(process_index, process_count)
  split = _process_split(cfg.train_split, index, count)
  rows = square_store.record_index(cfg)
  shards = [(i.filename, rows[os.path.basename(i.filename)][i.skip:i.skip + i.take])
            for i in builder.info.splits[split].file_instructions]
  if not sum(len(r) for _, r in shards):
    raise UserError(f'{cfg.train_split} has no examples for process {index} of {count}.')
  position = start_step * local_batch_size if start_position is None else start_position
  return store_reader.train_batches(shards, cfg.resize_size, local_batch_size, seed=cfg.seed,
                                    start_position=position, jpeg=cfg.store == 'jpeg')


def eval_steps(cfg: DataConfig, local_batch_size: int, process_count: int | None = None) -> int:
  """Batches every process runs: enough for the largest part of the split."""
  builder = _builder(cfg)
  _, count = _process(None, process_count)
  parts = [_process_split(cfg.eval_split, i, count) for i in range(count)]
  largest = max(builder.info.splits[p].num_examples for p in parts)
  return max(1, math.ceil(largest / local_batch_size))


def eval_dataset(cfg: DataConfig, local_batch_size: int, *, process_index: int | None = None,
                 process_count: int | None = None,
                 keep_file_name: bool = False) -> tf.data.Dataset:
  """This process's evaluation batches, padded so that all processes run eval_steps.

  Yields {'images': uint8 (b, R, R, 3) squares of the store, or (b, C, S, S, 3) host
  crops, 'labels': int32 (b,), 'mask': bool (b,)} (and 'file_name' when asked). Real
  examples have mask True and appear once.
  """
  cfg.validate()
  builder = _builder(cfg)
  index, count = _process(process_index, process_count)
  split = _process_split(cfg.eval_split, index, count)
  num_examples = builder.info.splits[split].num_examples
  padding = eval_steps(cfg, local_batch_size, count) * local_batch_size - num_examples
  parse, is_jpeg = _parser(builder, keep_file_name), tfds_data.is_jpeg(builder)

  def example(serialized):
    parsed = parse(serialized)
    images = (augment.eval_images(parsed['image'], cfg, is_jpeg) if cfg.store == 'none'
              else square_store.decode_square(parsed['image'], cfg))
    out = {'images': images, 'labels': parsed['label'], 'mask': tf.constant(True)}
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
  """Endless {'images': uint8 (B, R, R, 3) or (B, S, S, 3), 'labels': int32 (B,)} arrays.

  The batch of step N is the same whether the run started at 0 or resumed at N.
  start_examples (examples the run has seen, over all readers) wins over start_step.
  """
  local, index, count = _reader_batch(global_batch_size, mesh)
  position = None if start_examples is None else start_examples // count  # each reads a part
  batches = host_batches(cfg, local, start_step=start_step, start_position=position,
                         process_index=index, process_count=count)
  return prefetch(_to_global(batches, mesh, count))


def eval_batches(cfg: DataConfig, global_batch_size: int, mesh) -> Iterator[dict]:
  """{'images': uint8 (B, R, R, 3) or (B, C, S, S, 3), 'labels', 'mask': bool (B,)}.

  eval_steps(cfg, B // readers, readers) batches, the same on every process (readers:
  data_readers(mesh)[1]); count an example only where mask is True.
  """
  local, index, count = _reader_batch(global_batch_size, mesh)
  ds = eval_dataset(cfg, local, process_index=index, process_count=count)
  return prefetch(_to_global(ds.as_numpy_iterator(), mesh, count))


# ----------------------------------------------------------------------------------
# Means and single images.


def mean_image_path(cfg: DataConfig, workdir: str | None = None) -> str:
  """Where the paper's mean image of cfg.train_split (R x R) is kept, one per input."""
  # 'train[:90%]' -> 'train_to90pct', 'train[90%:]' -> 'train_90pctto': one file per slice.
  split = cfg.train_split.replace('%', 'pct').replace(':', 'to')
  split = re.sub(r'[^A-Za-z0-9]+', '_', split).strip('_')
  if cfg.store == 'none':
    name = f'mean_image_{cfg.dataset}_{split}_{cfg.resize_size}px.npy'
  else:  # a JPEG store's squares differ from the exact ones
    name = f'mean_image_{square_store.config_name(cfg)}_{split}.npy'
  return os.path.join(workdir or tfds_data.tfds_builder(cfg).data_dir, name)


def _square(data, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """uint8 (R, R, 3): a stored square, or the central square of a full-size image."""
  if cfg.store != 'none':
    return square_store.decode_square(data, cfg)
  return augment.central_square(data, cfg.resize_size, is_jpeg)


def compute_mean_image(cfg: DataConfig, max_examples: int | None = None,
                       batch_size: int = 256) -> np.ndarray:
  """Mean over the training split of the R x R squares (the paper's 256 x 256 images)."""
  builder = _builder(cfg)
  is_jpeg, parse = tfds_data.is_jpeg(builder), _parser(builder)
  ds = _records(builder, cfg.train_split)
  if max_examples:
    ds = ds.take(max_examples)
  ds = ds.map(lambda r: _square(parse(r)['image'], cfg, is_jpeg),
              num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
  total, count = np.zeros((cfg.resize_size, cfg.resize_size, 3), np.float64), 0
  for batch in ds.as_numpy_iterator():
    total += batch.sum(axis=0, dtype=np.float64)
    count += batch.shape[0]
  return (total / max(count, 1)).astype(np.float32)


def mean_for(cfg: DataConfig, workdir: str | None = None) -> np.ndarray:
  """The mean the steps subtract: (3,) for 'channel'; for 'pixel', the mean image.

  With the store, the pixel mean is the R x R mean image, subtracted from the square
  before the crop as the paper did; the store holds it for each whole split. Otherwise
  (and for a part of a split, e.g. 'train[:90%]') it is computed once from the
  training split and kept as .npy in workdir (or, without one, next to the prepared
  data); for full-size crops, its central S x S is subtracted (as cuda-convnet2 did).
  """
  if cfg.mean == 'channel':
    return preprocess.CHANNEL_MEAN
  stored = square_store.stored_mean(cfg) if cfg.store != 'none' else None
  if stored is not None:
    return stored
  path = mean_image_path(cfg, workdir)
  mean = None
  if tf.io.gfile.exists(path):
    try:
      mean = square_store.read_mean_image(path, cfg.resize_size)
    except ValueError as error:  # a cache: made again
      logging.warning('%s: computing it again.', error)
  if mean is None:
    logging.info('Computing the mean image of %s %s into %s', cfg.dataset, cfg.train_split, path)
    mean = compute_mean_image(cfg)
    tf.io.gfile.makedirs(os.path.dirname(path))
    temporary = f'{path}.tmp{os.getpid()}'
    with tf.io.gfile.GFile(temporary, 'wb') as f:
      np.save(f, mean)
    tf.io.gfile.rename(temporary, path, overwrite=True)
  return mean if cfg.store != 'none' else device_augment.centre_crop(mean, cfg.image_size)


def normalizer_for(cfg: DataConfig, workdir: str | None = None):
  """What the train and eval steps do to the uint8 batches on the device.

  A device_augment.SquareAugmenter for the store's squares, else a preprocess.Normalizer.
  """
  std = preprocess.CHANNEL_STD if cfg.standardize else None
  if cfg.store != 'none':
    return device_augment.SquareAugmenter(mean_for(cfg, workdir), std, cfg.image_size,
                                          cfg.augment, cfg.eval_crops)
  return preprocess.Normalizer(mean_for(cfg, workdir), std)


def load_images_for_predict(paths: Sequence[str], cfg: DataConfig) -> np.ndarray:
  """uint8 (N, C, S, S, 3): the eval crops (cfg.eval_crops) of each image file.

  With the store: (N, R, R, 3), the central squares, which normalizer_for(cfg) crops on
  the device as in evaluation.

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
      image = tf.constant(data)
      out.append((augment.eval_images(image, cfg, is_jpeg) if cfg.store == 'none'
                  else augment.central_square(image, cfg.resize_size, is_jpeg)).numpy())
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
      raise UserError(f'{path} is not an image TensorFlow can decode '
                       f'(JPEG, PNG, GIF or BMP): {e.message.splitlines()[0]}') from None
  return np.stack(out)


# ----------------------------------------------------------------------------------
# Throughput benchmark.


class Window(NamedTuple):
  """One timed window of a pipeline."""
  images_per_s: float
  images_per_cpu_s: float      # every thread of this process counted
  others: float                # share of the CPUs other processes used
  decoder_alone: float | None  # the JPEG store only: its decoder alone right after (ceiling)


def _window(cfg: DataConfig, batch_size: int, seconds: float, mesh, start_step: int) -> Window:
  from alexnet_jax.tools import benchmark as step_benchmark  # pylint: disable=import-outside-toplevel
  if mesh is None:
    batches = host_batches(cfg, batch_size, start_step=start_step)
  else:
    batches = train_batches(cfg, batch_size, mesh, start_step=start_step)
  for _ in range(3):  # warm up: fill the shuffle buffer and the prefetch queues
    jax.block_until_ready(next(batches))
  busy_start = step_benchmark.busy_cpu_seconds()
  start, cpu_start, images = time.perf_counter(), time.process_time(), 0
  while time.perf_counter() - start < seconds:
    jax.block_until_ready(next(batches))
    images += batch_size
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  others = (step_benchmark.busy_cpu_seconds() - busy_start - cpu) / (wall * os.cpu_count())
  del batches  # its reader's threads stop before the ceiling is timed
  # This machine's speed moves by up to half between minutes: the ceiling is measured in
  # the same minute as the reader it bounds.
  ceiling = jpeg_decode_rate(cfg, seconds / 2) if cfg.store == 'jpeg' else None
  return Window(images / wall, images / cpu, max(0.0, others), ceiling)


def benchmark(cfgs: Sequence[DataConfig], batch_size: int = 256, seconds: float = 10.0,
              repeats: int = 3, mesh=None,
              quiet: float = 0.0) -> list[list[Window]]:
  """Training-pipeline throughput of each config, per repeat.

  Host uint8 batches (host_batches), made global jax.Arrays on `mesh` if given. The
  configs' windows are interleaved, in an order rotated every repeat, so that other
  jobs' load falls on all alike; with `quiet`, each waits (up to 2 min) until the CPUs
  are less busy than that. The CPU figure counts every thread of this process: a
  per-core rate that holds even when other work shares the machine.
  """
  from alexnet_jax.tools import benchmark as step_benchmark  # pylint: disable=import-outside-toplevel
  results = [[] for _ in cfgs]
  for repeat in range(repeats):
    for i in [(repeat + k) % len(cfgs) for k in range(len(cfgs))]:
      if quiet:
        step_benchmark.wait_until_quiet(quiet, max_wait=120)
      results[i].append(_window(cfgs[i], batch_size, seconds, mesh, start_step=repeat * 1000))
      gc.collect()  # the window's pipeline and its threads are gone before the next starts
  return results


def jpeg_decode_rate(cfg: DataConfig, seconds: float = 5.0) -> float:
  """Images per CPU-second of decoding the JPEG store's squares alone (one thread, from
  memory): the ceiling of its reader."""
  import simplejpeg  # pylint: disable=import-outside-toplevel
  name, rows = next(iter(square_store.record_index(cfg).items()))
  rows = rows[:256]
  with open(os.path.join(square_store.store_dir(cfg), name), 'rb') as f:
    data = f.read(int((rows[:, 0] + rows[:, 1]).max()))
  jpegs = [data[offset:offset + length] for offset, length, _ in rows]
  square = np.empty((cfg.resize_size, cfg.resize_size, 3), np.uint8)
  start, cpu_start, images = time.perf_counter(), time.process_time(), 0
  while time.perf_counter() - start < seconds:
    for jpeg in jpegs:
      simplejpeg.decode_jpeg(jpeg, 'RGB', buffer=square)
    images += len(jpegs)
  return images / (time.process_time() - cpu_start)


def main(argv=None) -> None:
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description='Input pipeline throughput (training).')
  parser.add_argument('--benchmark', action='store_true', required=True)
  parser.add_argument('--store', default='none',
                      help='comma-separated, measured side by side: none (full-size images '
                           'cropped on the host), jpeg, raw (the prepared store of squares)')
  parser.add_argument('--store_quality', type=int, default=90)
  parser.add_argument('--dataset', default=tfds_data.IMAGENET)
  parser.add_argument('--data_dir', help='a prepared TFDS dir; default: write photo data')
  parser.add_argument('--manual_dir')
  parser.add_argument('--train_split', default='train')
  parser.add_argument('--image_size', type=int, default=227)
  parser.add_argument('--augment', default='paper')
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--images_per_class', type=int, default=250,
                      help='written data only: 8 classes of ImageNet-like JPEGs (500x375 '
                           'crops of a real photo, quality 90)')
  parser.add_argument('--to_device', action='store_true',
                      help='also build global jax.Arrays on a one-device mesh')
  parser.add_argument('--quiet', type=float, default=0.0,
                      help='before each window, wait (up to 2 min) until the CPUs are less '
                           'busy than this fraction (0.1: idle); 0: never')
  args = parser.parse_args(argv)
  try:
    _run_benchmark(args)
  except UserError as error:
    raise SystemExit(f'input_pipeline: error: {error}') from None


def _run_benchmark(args) -> None:
  """main's work; a setting that cannot run raises UserError before any data is written."""
  import tempfile  # pylint: disable=import-outside-toplevel
  cfgs = [DataConfig(dataset=args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir,
                     train_split=args.train_split, image_size=args.image_size,
                     augment=args.augment, shuffle_buffer=1000, store=store,
                     store_quality=args.store_quality) for store in args.store.split(',')]
  for cfg in cfgs:
    cfg.validate()
  if args.data_dir is None:
    root = tempfile.mkdtemp(prefix='alexnet_bench_')
    data_dir, manual_dir = os.path.join(root, 'tfds'), os.path.join(root, 'manual')
    demo_data.write_demo_imagenet(manual_dir, args.images_per_class, oddities=False, photos=True)
    cfgs = [dataclasses.replace(cfg, data_dir=data_dir, manual_dir=manual_dir) for cfg in cfgs]
  for cfg in cfgs:
    prepare(cfg)
    if cfg.store != 'none':
      print(f'Store: {square_store.summary(square_store.read_facts(cfg))}.')
  mesh = (jax.make_mesh((1, 1), ('data', 'tower'), devices=jax.devices()[:1])
          if args.to_device else None)
  cores = len(os.sched_getaffinity(0))
  for cfg, windows in zip(cfgs, benchmark(cfgs, args.batch_size, args.seconds, args.repeats,
                                          mesh, args.quiet)):
    wall, per_cpu, others = (float(np.median([getattr(w, field) for w in windows]))
                             for field in ('images_per_s', 'images_per_cpu_s', 'others'))
    print(f'store={cfg.store} augment={cfg.augment} image_size={cfg.image_size} '
          f'resize={cfg.resize_size} batch={args.batch_size} to_device={args.to_device}: runs '
          f'{", ".join(f"{w.images_per_s:.0f}" for w in windows)} images/s; median {wall:.0f} '
          f'images/s on {cores} cores ({wall / cores:.0f} per core), other processes using '
          f'{others:.0%} of the CPUs; {per_cpu:.0f} images per CPU-second of this process.')
    if cfg.store == 'jpeg':
      ceilings = [w.decoder_alone for w in windows]
      shares = ', '.join(f'{w.images_per_cpu_s / w.decoder_alone:.0%}' for w in windows)
      print(f'  its ceiling: decoding its squares alone, one thread, from memory, right after '
            f'each run: {float(np.median(ceilings)):.0f} images per CPU-second; the reader '
            f'reached {shares} of it.')


if __name__ == '__main__':
  main()
