"""The mean the steps subtract, and the device-side normalizer of a run.

--mean=channel subtracts cuda-convnet2's per-channel mean; --mean=pixel the paper's "mean
activity over the training set": the per-pixel mean of the R x R squares of the training
split. The store holds it for each of its whole splits (square_store.py writes it while
preparing); for a part of a split ('train[:90%]') or the full-size input it is computed
once and kept as .npy in the workdir (or, without one, beside the prepared data).
"""

from __future__ import annotations

import os
import re

from absl import logging
import numpy as np

from alexnet_jax import device_augment
from alexnet_jax import preprocess
from alexnet_jax.config import DataConfig, UserError
from alexnet_jax.data import augment
from alexnet_jax.data import dataset
from alexnet_jax.data import records
from alexnet_jax.data import square_store
from alexnet_jax.data import tfds_data
from alexnet_jax.data.tensorflow_setup import tf


def read(path: str, size: int) -> np.ndarray:
  """The size x size x 3 mean image saved at path; ValueError saying why if it is not one."""
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      mean = np.load(f)
  except (ValueError, EOFError) as error:  # torn, emptied or not an .npy file
    raise ValueError(f'{path} is not a readable .npy file ({error})') from None
  if mean.shape != (size, size, 3):
    raise ValueError(f'{path} holds a {mean.shape} array, not a {size}x{size}x3 mean image')
  return mean


def stored(cfg: DataConfig) -> np.ndarray | None:
  """The store's R x R mean image of cfg.train_split, if that is a whole split of the store."""
  path = square_store.mean_image_path(cfg, cfg.train_split)
  if not re.fullmatch(r'\w+', cfg.train_split) or not tf.io.gfile.exists(path):
    return None
  try:
    return read(path, cfg.resize_size)
  except ValueError as error:
    raise UserError(f'{error}: the store is damaged; move {square_store.store_dir(cfg)} away '
                    f'and prepare it again: {square_store.prepare_command(cfg)}') from None


def cached_path(cfg: DataConfig, workdir: str | None = None) -> str:
  """Where the computed mean image of cfg.train_split (R x R) is kept, one per input."""
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


def compute(cfg: DataConfig, max_examples: int | None = None,
            batch_size: int = 256) -> np.ndarray:
  """Mean over the training split of the R x R squares (the paper's 256 x 256 images)."""
  builder = dataset.builder(cfg)
  is_jpeg, parse = tfds_data.is_jpeg(builder), records.parser(builder)
  ds = records.records(builder, cfg.train_split)
  if max_examples:
    ds = ds.take(max_examples)
  ds = ds.map(lambda r: _square(parse(r)['image'], cfg, is_jpeg),
              num_parallel_calls=records.AUTOTUNE).batch(batch_size).prefetch(records.AUTOTUNE)
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
  training split and cached (cached_path); a cache that cannot be read is made again. For
  full-size crops, its central S x S is subtracted (as cuda-convnet2 did).
  """
  if cfg.mean == 'channel':
    return preprocess.CHANNEL_MEAN
  mean = stored(cfg) if cfg.store != 'none' else None
  if mean is not None:
    return mean
  path = cached_path(cfg, workdir)
  if tf.io.gfile.exists(path):
    try:
      mean = read(path, cfg.resize_size)
    except ValueError as error:  # a cache: made again
      logging.warning('%s: computing it again.', error)
  if mean is None:
    logging.info('Computing the mean image of %s %s into %s', cfg.dataset, cfg.train_split, path)
    mean = compute(cfg)
    tf.io.gfile.makedirs(os.path.dirname(path))
    temporary = f'{path}.tmp{os.getpid()}'
    with tf.io.gfile.GFile(temporary, 'wb') as f:
      np.save(f, mean)
    tf.io.gfile.rename(temporary, path, overwrite=True)
  return mean if cfg.store != 'none' else device_augment.centre_crop(mean, cfg.image_size)


def normalizer_for(cfg: DataConfig, workdir: str | None = None):
  """What the train and eval steps do to the uint8 batches on the device.

  A device_augment.SquareAugmenter for the store's squares, else a preprocess.Normalizer.
  A net of Caffe's input convention gets its input as its weights expect: BGR minus Caffe's
  mean pixel, on 0..255.
  """
  caffe = cfg.input_convention == 'caffe'
  mean = preprocess.CAFFE_MEAN_RGB if caffe else mean_for(cfg, workdir)
  std = preprocess.CHANNEL_STD if cfg.standardize else None
  if cfg.store != 'none':
    return device_augment.SquareAugmenter(mean, std, cfg.image_size, cfg.augment,
                                          cfg.eval_crops, bgr=caffe)
  return preprocess.Normalizer(mean, std, bgr=caffe)
