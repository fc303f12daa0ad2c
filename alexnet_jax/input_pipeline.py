"""TFDS data for AlexNet: preparation, the paper's augmentation, global batches.

What the host does, in tf.data, per example (S = image_size, R = resize_size(S): 256
for S in 224..256, else round(S * 256 / 224), e.g. 67 -> 77, 99 -> 113):
  train 'paper':     the paper's "shorter side to R, central R x R, random S x S crop,
                     random horizontal flip". Only the crop's window of the JPEG is
                     decoded and resized straight to S x S: the same pixels as resizing
                     the whole square and cropping, up to rounding the window to whole
                     decoded pixels (< 1/2 source pixel), for ~20% less work.
  train 'inception': a random-area crop (8%..100% of the image, aspect 3/4..4/3, as
                     tf.image.sample_distorted_bounding_box), decoded alone, resized to S,
                     random flip.
  train 'none':      the centre crop.
  eval:              the R x R square, then 1 crop (centre) or the paper's 10 (corners and
                     centre, then the same five mirrored).
JPEGs whose square is >= 2R (4R, 8R) are decoded at 1/2 (1/4, 1/8) scale by libjpeg.
Resizing is bilinear (half-pixel centres, as tf.image.resize), rounded to uint8, and
uint8 goes to the accelerator, where `alexnet_jax.preprocess.normalize` adds the PCA
colour noise and subtracts the mean (float32, 0..255 scale).

Batch layout (what train/eval code receives, global jax.Arrays split over 'data'):
  train: {'images': uint8 (B, S, S, 3), 'labels': int32 (B,)}
  eval:  {'images': uint8 (B, C, S, S, 3) with C = eval_crops (1 or 10),
          'labels': int32 (B,), 'mask': bool (B,)}; padded examples have mask False.
  Every eval example appears exactly once with mask True, whatever the batch size and
  the number of processes.

Determinism and resumption: the training stream of each process is its part of the
split (tfds.even_splits), epoch after epoch; epoch e's file order and shuffle are seeded
by (seed, e), and every random choice of an example is a stateless op seeded by
(seed, the example's position in the stream). So the same seed gives the same batches,
and `start_step=N` replays only the records (not the decoding) of the epoch it resumes in.

ImageNet preparation (`prepare`) runs TFDS's own imagenet2012 builder on the user's
tars, with every image checked on the way in: CMYK JPEGs and non-JPEG files (the PNG
named .JPEG) become RGB JPEGs, grayscale JPEGs stay (they decode to 3 channels), and
files no decoder can read are skipped and logged, so a long run never meets them.
"""

from __future__ import annotations

import collections
import io
import math
import os
import re
import time
from typing import Iterable, Iterator, Sequence

from absl import logging
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import data_config as data_config_lib
from alexnet_jax import demo_data
from alexnet_jax import preprocess

DataConfig = data_config_lib.DataConfig
AUTOTUNE = tf.data.AUTOTUNE
IMAGENET = 'imagenet2012'
IMAGENET_TARS = (demo_data.TRAIN_TAR, demo_data.VAL_TAR)
# Decode the JPEG at 1/r of its size (libjpeg's DCT scaling, nearly free) when the square
# is at least r times the size it is resized to: small nets read large images cheaply.
_JPEG_RATIOS = (1, 2, 4, 8)
# TF's default IDCT is INTEGER_FAST: seen here up to ~9 grey levels off on noisy
# quality-100 JPEGs, at the same speed as the accurate one.
_DCT_METHOD = 'INTEGER_ACCURATE'


def _hide_accelerators_from_tf() -> None:
  """tf.data never touches the accelerator; a full TF would otherwise grab its memory."""
  try:
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except (RuntimeError, ValueError):
    pass  # TF already initialized its devices, or has no such device type


_hide_accelerators_from_tf()


class MissingDataError(FileNotFoundError):
  """The dataset is not prepared and the files to prepare it are not where expected."""


# ----------------------------------------------------------------------------------
# Preparation.


def sanitize_image(data: bytes) -> bytes | None:
  """Bytes the pipeline can decode-and-crop as JPEG, or None if no decoder can read them.

  RGB and grayscale JPEGs pass unchanged (checked by decoding every scan at 1/8 size);
  CMYK JPEGs and other formats (PNG, GIF, BMP) are re-encoded as RGB JPEGs.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:  # header only
      fmt, mode = image.format, image.mode
  except Exception:  # pylint: disable=broad-except
    fmt, mode = None, None  # let TF decide
  try:
    if fmt == 'JPEG' and mode in ('RGB', 'L'):
      tf.io.decode_jpeg(data, ratio=8)
      return data
    if fmt == 'JPEG':  # CMYK or YCCK: libjpeg converts to RGB
      pixels = tf.io.decode_jpeg(data, channels=3, dct_method=_DCT_METHOD)
    else:
      pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.io.encode_jpeg(pixels, format='rgb', quality=100).numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
    return None


def _imagenet_builder_cls():
  """TFDS's imagenet2012 builder with every image sanitized; writes the same dataset."""
  from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as stock  # pylint: disable=import-outside-toplevel

  class Imagenet2012(stock.Builder, skip_registration=True):
    """Same name, version and features as the stock builder: stock TFDS reads the result."""
    name = IMAGENET
    pkg_dir_path = stock.Builder._get_pkg_dir_path()  # pylint: disable=protected-access

    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      self.skipped: list[str] = []

    def _generate_examples(self, archive, **kwargs):
      for key, example in super()._generate_examples(archive, **kwargs):
        image = example['image']
        data = image if isinstance(image, bytes) else image.read()
        clean = sanitize_image(data)
        if clean is None:
          self.skipped.append(example['file_name'])
          logging.warning('Skipping undecodable image %s (%d bytes); %d skipped so far.',
                          example['file_name'], len(data), len(self.skipped))
          continue
        yield key, {**example, 'image': clean}

  return Imagenet2012


def _builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
  return tfds.builder(cfg.dataset, data_dir=cfg.data_dir)


def _is_prepared(builder) -> bool:
  return tf.io.gfile.exists(os.path.join(builder.data_dir, 'dataset_info.json'))


def check_manual_dir(cfg: DataConfig) -> None:
  """Raises MissingDataError naming the expected tars unless both are in manual_dir."""
  where = cfg.manual_dir or '<--manual_dir not set>'
  missing = [name for name in IMAGENET_TARS
             if not cfg.manual_dir or not tf.io.gfile.exists(os.path.join(cfg.manual_dir, name))]
  if missing:
    data_dir = cfg.data_dir or tfds.core.constants.DATA_DIR
    raise MissingDataError(
        f'{IMAGENET} is not prepared in {data_dir} and its source files are missing: '
        f'expected {" and ".join(os.path.join(where, name) for name in IMAGENET_TARS)} '
        f'(missing: {", ".join(missing)}). Download them from https://image-net.org '
        f'(ILSVRC 2012), pass their folder as --manual_dir and the output folder as '
        f'--data_dir. For a small made-up set: python -m alexnet_jax.demo_data '
        f'--manual_dir=DIR.')


def prepare(cfg: DataConfig) -> list[str]:
  """Builds the TFDS dataset if it is not there yet; returns the files it skipped.

  imagenet2012 is built offline from manual_dir's tars (checked first, before any long
  work); other datasets are downloaded by TFDS.
  """
  if _is_prepared(_builder(cfg)):
    return []
  if cfg.dataset != IMAGENET:
    _builder(cfg).download_and_prepare()
    return []
  check_manual_dir(cfg)
  builder = _imagenet_builder_cls()(data_dir=cfg.data_dir)
  start = time.time()
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=cfg.manual_dir))
  logging.info('Prepared %s in %s in %.0f s; skipped %d undecodable images%s',
               IMAGENET, builder.data_dir, time.time() - start, len(builder.skipped),
               (': ' + ', '.join(builder.skipped)) if builder.skipped else '.')
  return list(builder.skipped)


def _prepared_builder(cfg: DataConfig):
  builder = _builder(cfg)
  if not _is_prepared(builder):
    raise MissingDataError(f'{cfg.dataset} is not prepared in {builder.data_dir}: call '
                           'input_pipeline.prepare(cfg) first (train does it).')
  return builder


def _keys(builder) -> tuple[str, str]:
  """(image key, label key) of an image-classification dataset."""
  keys = builder.info.supervised_keys
  if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
    return keys
  return 'image', 'label'


def dataset_info(cfg: DataConfig) -> tuple[int, int, int, list[str]]:
  """(num_classes, num_train_examples, num_eval_examples, class_names) of the splits."""
  builder = _prepared_builder(cfg)
  label = builder.info.features[_keys(builder)[1]]
  splits = builder.info.splits
  return (label.num_classes, splits[cfg.train_split].num_examples,
          splits[cfg.eval_split].num_examples, list(label.names))


# ----------------------------------------------------------------------------------
# Decoding and augmentation (tf.data graph code, one example at a time).


def _is_jpeg(builder) -> bool:
  return getattr(builder.info.features[_keys(builder)[0]], 'encoding_format', None) == 'jpeg'


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds bilinear output (a convex mix of uint8 values, so within 0..255) to uint8.

  One add and one cast: round + saturate_cast cost ~15% of the whole pipeline here.
  """
  return tf.cast(image + 0.5, tf.uint8)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear to size x size, float32."""
  image = tf.image.resize(image[None], [size, size], method='bilinear')[0]
  return tf.ensure_shape(image, [size, size, 3])


def _decode(data, window_fn, is_jpeg: bool, square_at_least: int | None = None) -> tf.Tensor:
  """Decodes only the window window_fn([height, width]) = [y, x, h, w] of an image.

  JPEGs are decoded at the smallest scale 1/r (libjpeg's DCT scaling, r in 1, 2, 4, 8)
  whose shorter side is still >= square_at_least, and window_fn gets the scaled
  shape: a small net reads large images at a fraction of the cost. Other formats are
  decoded whole and sliced.
  """
  if not is_jpeg:
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method=_DCT_METHOD),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    y, x, h, w = tf.unstack(window_fn(tf.shape(image)[:2]))
    return image[y:y + h, x:x + w]
  shape = tf.image.extract_jpeg_shape(data)[:2]
  index = tf.constant(0)
  if square_at_least:
    index = tf.reduce_sum(tf.cast(
        tf.reduce_min(shape) // tf.constant(_JPEG_RATIOS[1:]) >= square_at_least, tf.int32))
  ratio = tf.gather(tf.constant(_JPEG_RATIOS), index)
  window = window_fn((shape + ratio - 1) // ratio)  # libjpeg rounds scaled sizes up

  def at(r):
    return lambda: tf.image.decode_and_crop_jpeg(data, window, channels=3, ratio=r,
                                                 dct_method=_DCT_METHOD)

  return tf.switch_case(index, [at(r) for r in _JPEG_RATIOS])


def _square(shape) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(y, x, side) of the central square of an image of this [height, width]."""
  side = tf.reduce_min(shape)
  return (shape[0] - side) // 2, (shape[1] - side) // 2, side


def central_square(data, size: int, is_jpeg: bool = True) -> tf.Tensor:
  """Shorter side resized to `size`, central size x size square: float32 (size, size, 3)."""
  def window(shape):
    y, x, side = _square(shape)
    return tf.stack([y, x, side, side])
  return _resize(_decode(data, window, is_jpeg, size), size)


def _flip(image, seed) -> tf.Tensor:
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def _square_crop(data, offset, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """The S x S crop at `offset` = (y, x) of the R x R square, float32.

  Decodes and resizes only the crop's window of the original (R-square units mapped
  back to source pixels, rounded to whole pixels), not the whole square: the same
  pixels as resize-then-crop up to that rounding, for ~20% less work. When the
  square's side equals R it is exactly a slice.
  """
  size, out = cfg.resize_size, cfg.image_size

  def window(shape):
    y, x, side = _square(shape)
    scale = tf.cast(side, tf.float32) / size
    crop = tf.clip_by_value(tf.cast(tf.round(out * scale), tf.int32), 1, side)
    dy, dx = tf.unstack(tf.cast(tf.round(tf.cast(offset, tf.float32) * scale), tf.int32))
    return tf.stack([y + tf.minimum(dy, side - crop), x + tf.minimum(dx, side - crop), crop, crop])

  return _resize(_decode(data, window, is_jpeg, size), out)


def _paper_crop(data, seed, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """A random S x S crop of the R x R square (any of (R-S+1)^2 positions), random flip."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  offset = tf.random.stateless_uniform([2], crop_seed, 0, cfg.resize_size - cfg.image_size + 1,
                                       tf.int32)
  return _flip(_to_uint8(_square_crop(data, offset, cfg, is_jpeg)), flip_seed)


def _inception_crop(data, seed, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """Random area 8%..100%, aspect 3/4..4/3, resized to S x S, random flip."""
  box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

  def window(shape):
    begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), box_seed,
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], box[0], box[1]])

  crop = _resize(_decode(data, window, is_jpeg), cfg.image_size)
  return _flip(_to_uint8(crop), flip_seed)


def eval_crops(square: tf.Tensor, image_size: int, crops: int) -> tf.Tensor:
  """(C, S, S, 3) crops of an R x R square: C=1 the centre; C=10 the paper's ten.

  Order for 10: top-left, top-right, bottom-left, bottom-right, centre, then the same
  five mirrored left-right. The centre is at ((R-S)//2, (R-S)//2).
  """
  size = square.shape[0]
  far, mid = size - image_size, (size - image_size) // 2
  corners = [(mid, mid)] if crops == 1 else [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
  views = [square[y:y + image_size, x:x + image_size] for y, x in corners]
  if crops == 10:
    views += [tf.reverse(v, axis=[1]) for v in views]
  return tf.stack(views)


def _train_image(data, seed, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """uint8 (S, S, 3): one training view of an encoded image under cfg.augment."""
  if cfg.augment == 'paper':
    return _paper_crop(data, seed, cfg, is_jpeg)
  if cfg.augment == 'inception':
    return _inception_crop(data, seed, cfg, is_jpeg)
  centre = tf.fill([2], (cfg.resize_size - cfg.image_size) // 2)
  return _to_uint8(_square_crop(data, centre, cfg, is_jpeg))


def _eval_images(data, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """uint8 (C, S, S, 3): the eval crops of an encoded image."""
  square = _to_uint8(central_square(data, cfg.resize_size, is_jpeg))
  return eval_crops(square, cfg.image_size, cfg.eval_crops)


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
    raise ValueError(f'{builder.name} is stored as {builder.info.file_format}; this '
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
  image_key, label_key = _keys(builder)
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
                  process_index: int | None = None,
                  process_count: int | None = None) -> tf.data.Dataset:
  """This process's endless training batches from `start_step` on (numpy-ready).

  Yields {'images': uint8 (b, S, S, 3), 'labels': int32 (b,)} with b = local_batch_size.
  Batches run across epoch boundaries; step N holds stream positions N*b .. N*b+b-1.
  """
  cfg.validate()
  builder = _prepared_builder(cfg)
  index, count = _process(process_index, process_count)
  split = _process_split(cfg.train_split, index, count)
  num_examples = builder.info.splits[split].num_examples
  if num_examples == 0:
    raise ValueError(f'{cfg.train_split} has no examples for process {index} of {count}.')
  first_epoch, offset = divmod(start_step * local_batch_size, num_examples)
  parse, is_jpeg = _parser(builder), _is_jpeg(builder)

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
    return {'images': _train_image(parsed['image'], seed, cfg, is_jpeg),
            'labels': parsed['label']}

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_records)
  ds = ds.map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return ds.with_options(_options()).prefetch(AUTOTUNE)


def eval_steps(cfg: DataConfig, local_batch_size: int, process_count: int | None = None) -> int:
  """Batches every process runs: enough for the largest part of the split."""
  builder = _prepared_builder(cfg)
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
  builder = _prepared_builder(cfg)
  index, count = _process(process_index, process_count)
  split = _process_split(cfg.eval_split, index, count)
  num_examples = builder.info.splits[split].num_examples
  padding = eval_steps(cfg, local_batch_size, count) * local_batch_size - num_examples
  parse, is_jpeg = _parser(builder, keep_file_name), _is_jpeg(builder)

  def example(serialized):
    parsed = parse(serialized)
    out = {'images': _eval_images(parsed['image'], cfg, is_jpeg),
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


def _check_batch(global_batch_size: int, mesh) -> tuple[int, int, int]:
  """(local batch, reader index, reader count); ValueError if the batch cannot be split."""
  index, count = data_readers(mesh)
  data = mesh.shape['data']
  if global_batch_size % count or global_batch_size % data:
    raise ValueError(f'the global batch size {global_batch_size} must be divisible by the '
                     f'number of processes reading data ({count}) and by the mesh\'s data '
                     f'axis ({data}).')
  return global_batch_size // count, index, count


def _to_global(batches: Iterable[dict], mesh, count: int) -> Iterator[dict]:
  """Host numpy batches -> global jax.Arrays split over 'data' (transfers start now)."""
  sharding = NamedSharding(mesh, P('data'))
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


def train_batches(cfg: DataConfig, global_batch_size: int, mesh,
                  start_step: int = 0) -> Iterator[dict]:
  """Endless {'images': uint8 (B, S, S, 3), 'labels': int32 (B,)} global arrays.

  The batch of step N is the same whether the run started at 0 or resumed at N.
  """
  local, index, count = _check_batch(global_batch_size, mesh)
  ds = train_dataset(cfg, local, start_step=start_step, process_index=index, process_count=count)
  return prefetch(_to_global(ds.as_numpy_iterator(), mesh, count))


def eval_batches(cfg: DataConfig, global_batch_size: int, mesh) -> Iterator[dict]:
  """{'images': uint8 (B, C, S, S, 3), 'labels': int32 (B,), 'mask': bool (B,)}.

  eval_steps(cfg, B // readers, readers) batches (readers: data_readers(mesh)[1]); count
  an example only where mask is True.
  """
  local, index, count = _check_batch(global_batch_size, mesh)
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
  return os.path.join(workdir or _builder(cfg).data_dir, name)


def compute_mean_image(cfg: DataConfig, max_examples: int | None = None,
                       batch_size: int = 256) -> np.ndarray:
  """Mean over the training split of the R x R squares (the paper's 256 x 256 images)."""
  builder = _prepared_builder(cfg)
  is_jpeg, parse = _is_jpeg(builder), _parser(builder)
  ds = _records(builder, cfg.train_split)
  if max_examples:
    ds = ds.take(max_examples)
  ds = ds.map(lambda r: _to_uint8(central_square(parse(r)['image'], cfg.resize_size, is_jpeg)),
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

  Reads JPEG, PNG, GIF or BMP whatever the file name says. Raises FileNotFoundError or
  ValueError naming the file that is missing or not an image.
  """
  out = []
  for path in paths:
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f'no such image file: {path}')
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = f.read()
    try:
      # JPEGs take the evaluation's own decoder; anything else is decoded whole.
      is_jpeg = data[:3] == b'\xff\xd8\xff'
      out.append(_eval_images(tf.constant(data), cfg, is_jpeg).numpy())
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
      raise ValueError(f'{path} is not an image TensorFlow can decode '
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
  parser.add_argument('--dataset', default=IMAGENET)
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
