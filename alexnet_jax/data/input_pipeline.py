"""The run's input: per-reader streams of batches, global batches on the mesh, predict images.

Two inputs (DataConfig.store):
  'jpeg', 'raw': the prepared store of R x R squares (square_store.py), read straight into
      the batches (store_reader.py; the JPEG squares decoded there); the crop, flip, PCA
      colour noise and mean subtraction happen in the jitted step (device_augment.py).
  'none': the full-size images, through tf.data (records.py): the host decodes and crops
      (augment.py); the device adds the PCA colour noise and subtracts the mean
      (preprocess.py).
Either way the accelerator gets uint8 and makes float32 on the 0..255 scale. What is read
is prepared by dataset.py; the mean the steps subtract comes from mean_image.py.

Batch layout (what train/eval code receives, global jax.Arrays split over 'data'):
  train: {'images': uint8 (B, R, R, 3) squares, or (B, S, S, 3) host crops,
          'labels': int32 (B,)}
  eval:  {'images': uint8 (B, R, R, 3) squares, or (B, C, S, S, 3) host crops with
          C = eval_crops (1 or 10), 'labels': int32 (B,), 'mask': bool (B,)};
          padded examples have mask False.
  Every eval example appears exactly once with mask True, whatever the batch size and
  the number of processes.

Determinism and resumption: the training stream of each reader (a process, or the
processes of a tower pair) is its part of the split, epoch after epoch. The store's
reader permutes the part each epoch, seeded by (seed, epoch); the full-size stream
shuffles files and examples seeded by (seed, epoch), and every random choice of an
example is a stateless op seeded by (seed, the example's position in the stream). So the
same seed gives the same batches, and a stream resumed at `start_position` (the examples
this reader has read) continues exactly: the store's reader reads nothing twice, the
full-size stream replays only the records (not the decoding) of the epoch it resumes in.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Any, Iterable, Iterator, Sequence

import jax
import numpy as np

from alexnet_jax import distributed
from alexnet_jax import parallel
from alexnet_jax.config import DataConfig, UserError
from alexnet_jax.data import augment
from alexnet_jax.data import dataset
from alexnet_jax.data import mean_image
from alexnet_jax.data import records
from alexnet_jax.data import square_store
from alexnet_jax.data import store_reader
from alexnet_jax.data import tfds_data
from alexnet_jax.data.tensorflow_setup import tf


# ----------------------------------------------------------------------------------
# One reader's streams (tf.data or the store's reader; host numpy batches).


def _reader(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(index, count) of this reader: this process among all, unless told otherwise."""
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def _training_part(cfg: DataConfig, process_index, process_count):
  """(builder, this reader's part of the training split, its size, index, count)."""
  cfg.validate()
  builder = dataset.builder(cfg)
  index, count = _reader(process_index, process_count)
  split = records.part(cfg.train_split, index, count)
  size = builder.info.splits[split].num_examples
  if size == 0:
    raise UserError(f'{cfg.train_split} has no examples for process {index} of {count}.')
  return builder, split, size, index, count


def _epoch_seed(seed: int, epoch) -> tf.Tensor:
  # Distinct for every (seed, epoch) pair a run can reach.
  return tf.cast(seed, tf.int64) * (2**31) + tf.cast(epoch, tf.int64)


def train_dataset(cfg: DataConfig, local_batch_size: int, *, start_position: int = 0,
                  process_index: int | None = None,
                  process_count: int | None = None) -> tf.data.Dataset:
  """This reader's endless training batches of the full-size images (numpy-ready).

  Yields {'images': uint8 (b, S, S, 3) host crops, 'labels': int32 (b,)} with
  b = local_batch_size. Batches run across epoch boundaries; the first holds stream
  positions start_position .. start_position + b - 1.
  """
  builder, split, size, index, count = _training_part(cfg, process_index, process_count)
  first_epoch, offset = divmod(start_position, size)
  parse, is_jpeg = records.parser(builder), tfds_data.is_jpeg(builder)

  def epoch_records(epoch):
    seed = _epoch_seed(cfg.seed, epoch)
    stream = records.records(builder, split, shuffle_seed=seed).shuffle(cfg.shuffle_buffer,
                                                                        seed=seed)
    stream = stream.enumerate().map(lambda i, r: (epoch * size + i, r))
    # Resuming: drop what the first epoch already yielded, before anything is decoded.
    return stream.skip(tf.where(epoch == first_epoch, tf.constant(offset, tf.int64),
                                tf.constant(0, tf.int64)))

  def example(position, serialized):
    parsed = parse(serialized)
    # Unique per example of every reader's stream, so skipping is exact.
    seed = tf.stack([tf.cast(cfg.seed, tf.int64), position * count + index])
    return {'images': augment.train_image(parsed['image'], seed, cfg, is_jpeg),
            'labels': parsed['label']}

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_records)
  ds = ds.map(example, num_parallel_calls=records.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return ds.with_options(records.options()).prefetch(records.AUTOTUNE)


def host_batches(cfg: DataConfig, local_batch_size: int, *, start_position: int = 0,
                 process_index: int | None = None, process_count: int | None = None,
                 damaged: store_reader.DamagedRecords | None = None) -> Iterator[dict]:
  """This reader's endless training batches, as numpy, from `start_position` on.

  {'images': uint8 (b, R, R, 3) squares of the store, or (b, S, S, 3) host crops of the
  full-size images (train_dataset), 'labels': int32 (b,)}. A damaged record of the store
  stops the stream with one line, or with cfg.skip_damaged_records is counted in `damaged`.
  """
  if cfg.store == 'none':
    return _loss_checked(train_dataset(cfg, local_batch_size, start_position=start_position,
                                       process_index=process_index,
                                       process_count=process_count).as_numpy_iterator(), cfg)
  builder, split, _, _, _ = _training_part(cfg, process_index, process_count)
  rows = square_store.record_index(cfg)
  shards = [(i.filename, i.skip, rows[os.path.basename(i.filename)][i.skip:i.skip + i.take])
            for i in builder.info.splits[split].file_instructions]
  damaged = damaged or _damaged_records(cfg)
  return store_reader.train_batches(shards, cfg.resize_size, local_batch_size, seed=cfg.seed,
                                    start_position=start_position, jpeg=cfg.store == 'jpeg',
                                    damaged=damaged)


def _loss_checked(batches: Iterator[dict], cfg: DataConfig) -> Iterator[dict]:
  """tf.data's batches, a damaged record (its CRC fails) reported as one line."""
  try:
    yield from batches
  except tf.errors.DataLossError as error:
    what = (f'the {cfg.store} store in {square_store.store_dir(cfg)}' if cfg.store != 'none'
            else f'the prepared {cfg.dataset} in {tfds_data.tfds_builder(cfg).data_dir}')
    repair = (square_store.prepare_command(cfg) if cfg.store != 'none' else
              'move it away and prepare it again with --mode=prepare')
    raise UserError(f'{what} is damaged ({error.message.splitlines()[0]}): {repair}') from None


def eval_steps(cfg: DataConfig, local_batch_size: int, process_count: int | None = None) -> int:
  """Batches every reader runs: enough for the largest part of the split."""
  builder = dataset.builder(cfg)
  _, count = _reader(None, process_count)
  parts = [records.part(cfg.eval_split, i, count) for i in range(count)]
  largest = max(builder.info.splits[p].num_examples for p in parts)
  return max(1, math.ceil(largest / local_batch_size))


def eval_dataset(cfg: DataConfig, local_batch_size: int, *, process_index: int | None = None,
                 process_count: int | None = None,
                 keep_file_name: bool = False) -> tf.data.Dataset:
  """This reader's evaluation batches, padded so that all readers run eval_steps.

  Yields {'images': uint8 (b, R, R, 3) squares of the store, or (b, C, S, S, 3) host
  crops, 'labels': int32 (b,), 'mask': bool (b,)} (and 'file_name' when asked). Real
  examples have mask True and appear once.
  """
  cfg.validate()
  builder = dataset.builder(cfg)
  index, count = _reader(process_index, process_count)
  split = records.part(cfg.eval_split, index, count)
  num_examples = builder.info.splits[split].num_examples
  padding = eval_steps(cfg, local_batch_size, count) * local_batch_size - num_examples
  parse, is_jpeg = records.parser(builder, keep_file_name), tfds_data.is_jpeg(builder)

  def example(serialized):
    parsed = parse(serialized)
    images = (augment.eval_images(parsed['image'], cfg, is_jpeg) if cfg.store == 'none'
              else square_store.decode_square(parsed['image'], cfg))
    out = {'images': images, 'labels': parsed['label'], 'mask': tf.constant(True)}
    if keep_file_name:
      out['file_name'] = parsed['file_name']
    return out

  ds = records.records(builder, split).map(example, num_parallel_calls=records.AUTOTUNE,
                                           deterministic=True)
  blank = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(padding))
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return ds.with_options(records.options()).prefetch(records.AUTOTUNE)


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


def train_batches(cfg: DataConfig, global_batch_size: int, mesh, start_examples: int = 0,
                  damaged: store_reader.DamagedRecords | None = None) -> Iterator[dict]:
  """Endless {'images': uint8 (B, R, R, 3) or (B, S, S, 3), 'labels': int32 (B,)} arrays.

  start_examples: the examples the run has seen, over all readers (each has read its
  share): the batches continue exactly where a run that saw them would.
  """
  local, index, count = _reader_batch(global_batch_size, mesh)
  batches = host_batches(cfg, local, start_position=start_examples // count,
                         process_index=index, process_count=count, damaged=damaged)
  return prefetch(_to_global(batches, mesh, count))


def eval_batches(cfg: DataConfig, global_batch_size: int, mesh) -> Iterator[dict]:
  """{'images': uint8 (B, R, R, 3) or (B, C, S, S, 3), 'labels', 'mask': bool (B,)}.

  eval_steps(cfg, B // readers, readers) batches, the same on every process (readers:
  data_readers(mesh)[1]); count an example only where mask is True.
  """
  local, index, count = _reader_batch(global_batch_size, mesh)
  ds = eval_dataset(cfg, local, process_index=index, process_count=count)
  return prefetch(_to_global(_loss_checked(ds.as_numpy_iterator(), cfg), mesh, count))


@dataclasses.dataclass(frozen=True)
class TrainingInput:
  """What a training run reads (train.TrainingInput): its streams and its normalizer."""
  cfg: DataConfig
  batch_size: int
  eval_batch_size: int
  mesh: Any
  examples_per_epoch: int
  normalizer: Any
  damaged: store_reader.DamagedRecords

  @property
  def damaged_records(self) -> int:
    """Damaged records of the store skipped so far (--skip_damaged_records)."""
    return self.damaged.count

  @property
  def pca_std(self) -> float:
    return self.cfg.pca_std

  @property
  def eval_split(self) -> str:
    return self.cfg.eval_split

  @property
  def eval_crops(self) -> int:
    return self.cfg.eval_crops

  def train_batches(self, start_examples: int) -> Iterator[dict]:
    return train_batches(self.cfg, self.batch_size, self.mesh, start_examples, self.damaged)

  def eval_batches(self) -> Iterator[dict]:
    return eval_batches(self.cfg, self.eval_batch_size, self.mesh)


def training_input(cfg: DataConfig, batch_size: int, eval_batch_size: int, mesh,
                   workdir: str) -> TrainingInput:
  """The input of a training run on the prepared data (process 0 makes a missing mean image;
  the others then read its file)."""
  normalizer = distributed.in_turn('mean', lambda: mean_image.normalizer_for(cfg, workdir))
  return TrainingInput(cfg, batch_size, eval_batch_size, mesh,
                       dataset.facts(cfg).train_examples, normalizer, _damaged_records(cfg))


def _damaged_records(cfg: DataConfig) -> store_reader.DamagedRecords:
  """What a run does with damaged records: --skip_damaged_records, or stop naming the repair."""
  return store_reader.DamagedRecords(cfg.skip_damaged_records, square_store.prepare_command(cfg))


# ----------------------------------------------------------------------------------
# Single images.


def load_images_for_predict(paths: Sequence[str], cfg: DataConfig) -> np.ndarray:
  """uint8 (N, C, S, S, 3): the eval crops (cfg.eval_crops) of each image file.

  With the store: (N, R, R, 3), the central squares, which the run's normalizer crops on
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


if __name__ == '__main__':  # the command line this module had
  raise SystemExit('input_pipeline: the input benchmark is now a mode of the entry point: '
                   'python -m alexnet_jax.main --mode=benchmark --benchmark=input '
                   '--benchmark_stores=none,jpeg,raw [--data_dir=DIR]')
