"""TFDS datasets: imagenet2012 prepared offline from the user's tars, and dataset facts.

`prepare` runs TFDS's own imagenet2012 builder on ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar (no network), with every image checked on the way in: CMYK JPEGs
and non-JPEG files (the PNG named .JPEG) become RGB JPEGs, grayscale JPEGs stay (they
decode to 3 channels), and files no decoder can read are skipped and logged, so a long
run never meets them. Any other TFDS dataset is prepared by its own builder.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from typing import Iterator, NamedTuple

from absl import logging
from PIL import Image

from alexnet_jax.config import DataConfig, UserError
from alexnet_jax.data import augment
from alexnet_jax.data import demo_data
from alexnet_jax.data.tensorflow_setup import tf, tfds

IMAGENET = 'imagenet2012'
IMAGENET_TARS = (demo_data.TRAIN_TAR, demo_data.VAL_TAR)


class MissingDataError(UserError, FileNotFoundError):
  """The dataset is not prepared and the files to prepare it are not where expected."""


class BrokenTarError(UserError):
  """An ImageNet tar ends early or holds something that is not a tar."""


def _decodes_in_pil(data: bytes) -> bool:
  """Whether PIL decodes the whole image (a JPEG at 1/8 size: every scan, quickly)."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.draft(image.mode, (image.width // 8, image.height // 8))  # JPEG only
      image.load()
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def sanitize_image(data: bytes) -> bytes | None:
  """Bytes the pipeline can decode-and-crop as JPEG, or None if no decoder can read them.

  RGB and grayscale JPEGs pass unchanged; CMYK JPEGs and other formats (PNG, GIF, BMP)
  are re-encoded as RGB JPEGs. PIL decodes every image first: TensorFlow, handed a
  broken file, logs an error line about it.
  """
  if not _decodes_in_pil(data):
    return None
  with Image.open(io.BytesIO(data)) as image:  # header only
    fmt, mode = image.format, image.mode
  try:
    if fmt == 'JPEG' and mode in ('RGB', 'L'):
      tf.io.decode_jpeg(data, ratio=8)  # what training will do with it
      return data
    if fmt == 'JPEG':  # CMYK or YCCK: libjpeg converts to RGB
      pixels = tf.io.decode_jpeg(data, channels=3, dct_method=augment.DCT_METHOD)
    else:
      pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.io.encode_jpeg(pixels, format='rgb', quality=100).numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
    return None


class OwnWords:
  """A mixin for this project's TFDS builders: TFDS's own lines about the preparation unsaid.

  TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size, ...)"
  and "Dataset ... downloaded and prepared" to stdout, though nothing is downloaded here:
  the callers log what they prepare in their own words instead.
  """

  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


@contextlib.contextmanager
def _temporary_directory_removed_after():
  """Builds a TFDS builder with a temporary directory that is removed after.

  A builder of a dataset not prepared yet makes an empty temporary folder (for metadata on
  GCS, which is never read here) and leaves it behind: one per builder, every run.
  """
  with tempfile.TemporaryDirectory(prefix='alexnet_jax_tfds_') as scratch:
    previous, tempfile.tempdir = tempfile.tempdir, scratch
    try:
      yield
    finally:
      tempfile.tempdir = previous


def construct(builder_class, *args, **kwargs) -> tfds.core.DatasetBuilder:
  """builder_class(*args, **kwargs), leaving nothing in the system temporary directory; its
  preparation draws progress bars only on a terminal (a log would get their escape codes)."""
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  with _temporary_directory_removed_after():
    return builder_class(*args, **kwargs)


def _imagenet_builder_cls():
  """TFDS's imagenet2012 builder with every image sanitized; writes the same dataset."""
  from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as stock  # pylint: disable=import-outside-toplevel

  class Imagenet2012(OwnWords, stock.Builder, skip_registration=True):
    """Same name, version and features as the stock builder: stock TFDS reads the result."""
    name = IMAGENET
    pkg_dir_path = stock.Builder._get_pkg_dir_path()  # pylint: disable=protected-access

    def __init__(self, tars_dir: str | None = None, **kwargs):
      super().__init__(**kwargs)
      self.tars_dir = tars_dir  # named in its errors
      self.skipped: list[str] = []

    def _generate_examples(self, archive, **kwargs):
      try:
        yield from self._sanitized_examples(archive, **kwargs)
      except (tarfile.TarError, EOFError) as error:
        # The stock builder passes validation labels for the val tar only.
        name = demo_data.VAL_TAR if kwargs.get('validation_labels') else demo_data.TRAIN_TAR
        raise BrokenTarError(
            f'{name} in {self.tars_dir} cannot be read to its end ({error}): it is '
            'truncated or damaged. Download it again (compare its size with image-net.org\'s).'
        ) from None

    def _sanitized_examples(self, archive, **kwargs):
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


def tfds_builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
  """The one place a TFDS builder is opened (prepared or not: the facts before and after)."""
  return construct(tfds.builder, cfg.dataset, data_dir=cfg.data_dir)


def is_prepared(builder) -> bool:
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
        f'--data_dir. For a small made-up set, add --demo_data: it writes the demo ImageNet '
        f'tars into --manual_dir first.')


def check_sources(cfg: DataConfig) -> None:
  """MissingDataError, before any long work, if the dataset can be neither read nor made."""
  if cfg.dataset == IMAGENET and not is_prepared(tfds_builder(cfg)):
    check_manual_dir(cfg)


@contextlib.contextmanager
def preparing(version_dir: str) -> Iterator[None]:
  """Holds the preparation lock of a dataset's folder, and removes what a stopped preparation
  left there first (TFDS's incomplete.* folders). A second preparation waits for the
  first, then finds the dataset prepared."""
  parent = os.path.dirname(version_dir.rstrip('/'))
  if '://' in parent:  # no POSIX locks on remote file systems: TFDS's own renames only
    yield
    return
  os.makedirs(parent, exist_ok=True)
  with open(os.path.join(parent, '.preparing'), 'a') as lock:
    fcntl.lockf(lock, fcntl.LOCK_EX)  # released when this process ends, however
    for name in sorted(os.listdir(parent)):
      if name.startswith(tfds.core.constants.INCOMPLETE_PREFIX):
        shutil.rmtree(os.path.join(parent, name))
        logging.info('Removed %s, left by a preparation that was stopped.',
                     os.path.join(parent, name))
    yield


def prepare(cfg: DataConfig) -> list[str]:
  """Builds the TFDS dataset if it is not there yet; returns the files it skipped.

  imagenet2012 is built offline from manual_dir's tars (checked first, before any long
  work); other datasets are downloaded by TFDS.
  """
  check_sources(cfg)
  builder = tfds_builder(cfg)
  if is_prepared(builder):
    return []
  with preparing(builder.data_dir):
    return [] if is_prepared(tfds_builder(cfg)) else _build(cfg)


def _build(cfg: DataConfig) -> list[str]:
  """Runs the dataset's TFDS builder; returns the files it skipped."""
  if cfg.dataset != IMAGENET:
    tfds_builder(cfg).download_and_prepare()
    return []
  builder = construct(_imagenet_builder_cls(), data_dir=cfg.data_dir, tars_dir=cfg.manual_dir)
  logging.info('Preparing %s from the tars in %s with TFDS (offline, once) into %s ...',
               IMAGENET, cfg.manual_dir, builder.data_dir)
  start = time.time()
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=cfg.manual_dir))
  logging.info('Prepared %s in %s in %.0f s; skipped %d undecodable images%s',
               IMAGENET, builder.data_dir, time.time() - start, len(builder.skipped),
               (': ' + ', '.join(builder.skipped)) if builder.skipped else '.')
  return list(builder.skipped)


def prepared_builder(cfg: DataConfig):
  """The builder of the prepared dataset, opened once per data config."""
  return _prepared_builder(cfg)


@functools.cache
def _prepared_builder(cfg: DataConfig):
  builder = tfds_builder(cfg)
  if not is_prepared(builder):
    raise MissingDataError(f'{cfg.dataset} is not prepared in {builder.data_dir}: prepare it '
                           'with --mode=prepare (a --mode=train run prepares it too).')
  return builder


def label_keys(builder) -> tuple[str, str]:
  """(image key, label key) of an image-classification dataset."""
  keys = builder.info.supervised_keys
  if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
    return keys
  return 'image', 'label'


class Facts(NamedTuple):
  """What the run needs to know of a prepared dataset before reading it."""
  num_classes: int
  train_examples: int
  eval_examples: int
  class_names: list[str]


def facts(cfg: DataConfig, builder=None) -> Facts:
  """Classes and the sizes of cfg's splits, of the prepared source or of `builder` if given
  (a store of its squares)."""
  builder = builder or prepared_builder(cfg)
  label = builder.info.features[label_keys(builder)[1]]
  splits = builder.info.splits
  return Facts(label.num_classes, splits[cfg.train_split].num_examples,
               splits[cfg.eval_split].num_examples, list(label.names))


def is_jpeg(builder) -> bool:
  """Whether the dataset stores its images as JPEG (they can be decoded a window at a time)."""
  return getattr(builder.info.features[label_keys(builder)[0]], 'encoding_format', None) == 'jpeg'
