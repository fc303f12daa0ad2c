"""The paper's preprocessing done once: a TFDS dataset of R x R squares, JPEG or raw.

"We first rescaled the image such that the shorter side was of length 256, and then
cropped out the central 256x256 patch" (section 2). `prepare` does that once for every
split of the prepared source dataset (imagenet2012, or any TFDS image dataset), with
R = resize_size(image_size), and writes the squares as a TFDS dataset beside it:

  DATA_DIR/alexnet_squares/<source>_<R>px_<jpeg_q90 | raw>/<VERSION>/
      *.tfrecord-*               'image' (R x R x 3: a JPEG at the quality, or the raw
                                 uint8 bytes), 'label' and 'file_name' of the source
      mean_image_<split>.npy     the split's per-pixel mean image (R x R x 3, float32):
                                 the paper's "mean activity over the training set"
      record_index.npz           where each record's image bytes are in its file, and its
                                 label (store_reader.py reads them straight)
      store.json                 what it was made from, its size and how long it took

Examples keep the source's order, so split slices ('train[90%:]') are the same examples
as in the source. The squares are what evaluation makes of the full-size image (augment.central_square:
the same decoder, resize and rounding), so ImageNet's quirks (CMYK, PNG, grayscale,
tiny images), already cleaned by the source builder, go through as they do there. The
work runs in tf.data on every core. TFDS writes into a temporary folder and renames it
when complete, with the mean images and store.json inside: a killed preparation leaves
nothing a reader takes for a store, and a second one finds the store and does nothing.

Readers (store_reader.py for training, input_pipeline.py) only decode the squares; crops, flips, colour
noise and the mean happen on the device (alexnet_jax/device_augment.py).

  python -m alexnet_jax.main --mode=prepare --data_dir=DIR [--manual_dir=TARS] --image_size=227 --store=jpeg
"""

from __future__ import annotations

import functools
import gc
import io
import json
import os
import re
import time

from absl import logging
import google_crc32c
import numpy as np

from alexnet_jax.config import DataConfig, UserError
from alexnet_jax.data import augment
from alexnet_jax.data import tfds_data
from alexnet_jax.data.tensorflow_setup import tf, tfds

NAME = 'alexnet_squares'
# The store's format. 1.1.0: the index also locates each serialized example, whose CRC the
# reader checks; a 1.0.0 store (written before) is not read, and named where it is found.
VERSION = '1.1.0'
FACTS = 'store.json'
INDEX = 'record_index.npz'
_PROGRESS_SECONDS = 30.0
_BATCH = 64  # squares summed at once for the mean images


class MissingStoreError(UserError, FileNotFoundError):
  """The store the run reads is not prepared; the message names the command that makes it."""


class DamagedStoreError(UserError):
  """A file of the prepared store is missing or damaged; the message names the command
  that prepares it again."""


def config_name(cfg: DataConfig) -> str:
  """e.g. 'imagenet2012_256px_jpeg_q90': one store per source, R and encoding."""
  source = re.sub(r'[^A-Za-z0-9]+', '_', cfg.dataset).strip('_')
  encoding = 'raw' if cfg.store == 'raw' else f'jpeg_q{cfg.store_quality}'
  return f'{source}_{cfg.resize_size}px_{encoding}'


def _root(cfg: DataConfig) -> str:
  """The TFDS data dir: the store lives beside its source."""
  return cfg.data_dir or tfds.core.constants.DATA_DIR


def store_dir(cfg: DataConfig) -> str:
  return os.path.join(_root(cfg), NAME, config_name(cfg), VERSION)


def _facts(cfg: DataConfig) -> dict:
  """What a store must have been made from and how, to be this run's store."""
  return {'source': cfg.dataset, 'resize_size': cfg.resize_size, 'encoding': cfg.store,
          'quality': cfg.store_quality if cfg.store == 'jpeg' else None}


def prepare_command(cfg: DataConfig) -> str:
  """The command line that prepares cfg's store (and its source, if it is not yet)."""
  flags = [f'--dataset={cfg.dataset}', f'--data_dir={_root(cfg)}']
  if cfg.manual_dir:
    flags.append(f'--manual_dir={cfg.manual_dir}')
  flags += [f'--image_size={cfg.image_size}', f'--store={cfg.store}']
  if cfg.store == 'jpeg':
    flags.append(f'--store_quality={cfg.store_quality}')
  return 'python -m alexnet_jax.main --mode=prepare ' + ' '.join(flags)


def is_prepared(cfg: DataConfig) -> bool:
  return tf.io.gfile.exists(os.path.join(store_dir(cfg), 'dataset_info.json'))


def _older_formats(cfg: DataConfig) -> list[str]:
  """cfg's stores in a format other than VERSION (written by earlier code): none is read."""
  config_dir = os.path.dirname(store_dir(cfg))
  names = ([name.rstrip('/') for name in tf.io.gfile.listdir(config_dir)]
           if tf.io.gfile.isdir(config_dir) else [])
  return sorted(os.path.join(config_dir, name) for name in names
                if name != VERSION and re.fullmatch(r'\d+\.\d+\.\d+', name)
                and tf.io.gfile.exists(os.path.join(config_dir, name, 'dataset_info.json')))


def _older_note(cfg: DataConfig) -> str:
  older = _older_formats(cfg)
  return (f'; {", ".join(older)} holds it in an earlier format, which is not read (delete '
          f'it once {VERSION} is prepared)' if older else '')


def _missing_message(cfg: DataConfig) -> str:
  path = store_dir(cfg)
  stores = os.path.dirname(os.path.dirname(path))
  found = sorted(name.rstrip('/') for name in (
      tf.io.gfile.listdir(stores) if tf.io.gfile.isdir(stores) else ())
      if tf.io.gfile.exists(os.path.join(stores, name, VERSION, 'dataset_info.json')))
  config_dir = os.path.dirname(path)
  # What a killed preparation leaves: TFDS's temporary folder beside the version's.
  unfinished = tf.io.gfile.isdir(config_dir) and any(
      'incomplete' in name for name in tf.io.gfile.listdir(config_dir))
  notes = ' (an unfinished preparation was found there and is ignored)' if unfinished else ''
  notes += _older_note(cfg)
  if found:
    notes += f'; stores prepared there: {", ".join(found)}'
  return (f'the {cfg.store} store of {cfg.dataset} at {cfg.resize_size}x{cfg.resize_size} '
          f'(for --image_size={cfg.image_size}) is not prepared in {path}{notes}. Prepare '
          f'it with: {prepare_command(cfg)} (a --mode=train run prepares it too).')


def read_facts(cfg: DataConfig) -> dict:
  """store.json of cfg's prepared store: its source, R, encoding, size, preparation time."""
  with tf.io.gfile.GFile(os.path.join(store_dir(cfg), FACTS)) as f:
    return json.load(f)


def _checked_files(cfg: DataConfig, records: bool = False) -> str | None:
  """What is missing or damaged among the prepared store's files, or None.

  Its metadata (TFDS's dataset_info.json, store.json), its index, the mean images and the
  shards' sizes; with `records`, every record's CRC too (a read of the whole store).
  """
  path = store_dir(cfg)
  for name in ('dataset_info.json', FACTS, INDEX):
    if not tf.io.gfile.exists(os.path.join(path, name)):
      return f'{os.path.join(path, name)} is missing'
  try:
    read_facts(cfg)
    index = record_index(cfg)
    builder = tfds.builder_from_directory(path)
  except Exception as error:  # pylint: disable=broad-except  # json, zip, TFDS: any damage
    return f'a metadata file in {path} does not read ({type(error).__name__}: {error})'
  for split in builder.info.splits.values():
    mean = mean_image_path(cfg, split.name)
    if not tf.io.gfile.exists(mean):
      return f'{mean} is missing'
    for shard in split.file_instructions:
      rows = index.get(os.path.basename(shard.filename))
      if rows is None or rows.shape[1:] != (5,):
        return f'{os.path.join(path, INDEX)} does not index {shard.filename}'
      end = int(rows[-1, RECORD_OFFSET] + rows[-1, RECORD_LENGTH] + 4) if len(rows) else 0
      if not tf.io.gfile.exists(shard.filename) or tf.io.gfile.stat(shard.filename).length != end:
        return f'{shard.filename} is missing or not the size it was written with'
      damaged = _damaged_record(shard.filename, rows) if records else None
      if damaged is not None:
        return f'record {damaged} of {shard.filename} is damaged (its checksum does not match)'
  return None


def crc_matches(crc: int, stored: bytes) -> bool:
  """Whether a record's CRC-32C is the one TFRecord stored after it (masked, 4 bytes)."""
  masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  return masked == int.from_bytes(stored, 'little')


def _damaged_record(path: str, rows: np.ndarray) -> int | None:
  """The first record of a shard whose CRC-32C does not match, or None."""
  with open(path, 'rb') as f:
    for number, (offset, length) in enumerate(rows[:, [RECORD_OFFSET, RECORD_LENGTH]]):
      f.seek(int(offset))
      data = f.read(int(length) + 4)
      if not crc_matches(google_crc32c.value(data[:-4]), data[-4:]):
        return number
  return None


@functools.cache
def open_store(cfg: DataConfig) -> tfds.core.DatasetBuilder:
  """The prepared store of cfg, for reading; one line if there is none, or it is damaged
  (MissingStoreError, DamagedStoreError: each names the command that prepares it).

  Opened once per data config (an error is not cached: a later call looks again).
  """
  path = store_dir(cfg)
  if not tf.io.gfile.isdir(path):
    raise MissingStoreError(_missing_message(cfg))
  damage = _checked_files(cfg)
  if damage:
    raise DamagedStoreError(f'the store is damaged: {damage}. Prepare it again with: '
                            f'{prepare_command(cfg)}')
  facts = read_facts(cfg)
  expected = _facts(cfg)
  wrong = {key: facts.get(key) for key, value in expected.items() if facts.get(key) != value}
  if wrong:
    raise MissingStoreError(f'{path} holds a store made with {wrong}, not {expected}. Move '
                            f'it away and prepare the right one: {prepare_command(cfg)}')
  return tfds.builder_from_directory(path)


def mean_image_path(cfg: DataConfig, split: str, directory: str | None = None) -> str:
  """The store's mean image of a whole split (in `directory` while it is being written)."""
  return os.path.join(directory or store_dir(cfg), f'mean_image_{split}.npy')


def decode_square(data: tf.Tensor, cfg: DataConfig) -> tf.Tensor:
  """A stored image (JPEG or raw bytes) -> uint8 (R, R, 3)."""
  size = cfg.resize_size
  if cfg.store == 'raw':
    return tf.reshape(tf.io.decode_raw(data, tf.uint8), [size, size, 3])
  image = tf.io.decode_jpeg(data, channels=3, dct_method=augment.DCT_METHOD)
  return tf.ensure_shape(image, [size, size, 3])


# The index's columns, per record of a shard.
IMAGE_OFFSET, IMAGE_LENGTH, LABEL, RECORD_OFFSET, RECORD_LENGTH = range(5)


def record_index(cfg: DataConfig) -> dict[str, np.ndarray]:
  """The store's index: shard file name -> int64 (records, 5): each record's image offset
  and length in the file, its label, and where its serialized example lies (whose CRC
  follows it: store_reader.py checks it)."""
  with tf.io.gfile.GFile(os.path.join(store_dir(cfg), INDEX), 'rb') as f:
    return dict(np.load(io.BytesIO(f.read())))


def _varint(value: int) -> bytes:
  out = b''
  while value >= 0x80:
    out, value = out + bytes([value & 0x7F | 0x80]), value >> 7
  return out + bytes([value])


def _index_shard(path: str) -> np.ndarray:
  """The record_index rows of a shard's records.

  TFRecord framing: uint64 length, uint32 CRC, the serialized tf.train.Example, uint32
  CRC. The image is found as its own bytes field (BytesList.value: tag 0x0a, length,
  bytes) in the serialized record, so each offset is checked against the parsed record.
  """
  rows, position = [], 0
  with tf.io.gfile.GFile(path, 'rb') as f:
    while header := f.read(12):
      length = int.from_bytes(header[:8], 'little')
      record = f.read(length + 4)[:length]
      example = tf.train.Example.FromString(record).features.feature
      image = example['image'].bytes_list.value[0]
      field = b'\x0a' + _varint(len(image)) + image
      start = record.find(field)
      if start < 0:
        raise ValueError(f'{path}: record {len(rows)} holds no image bytes field.')
      rows.append((position + 12 + start + len(field) - len(image), len(image),
                   example['label'].int64_list.value[0], position + 12, length))
      position += 12 + length + 4
  return np.array(rows, np.int64).reshape(-1, 5)


# ----------------------------------------------------------------------------------
# Writing: a TFDS builder over the prepared source dataset.


class _Progress:
  """A log line every _PROGRESS_SECONDS: images done, rate, ETA."""

  def __init__(self, what: str, total: int):
    self.what, self.total = what, total
    self.start = self.last = time.monotonic()

  def update(self, done: int) -> None:
    now = time.monotonic()
    if now - self.last < _PROGRESS_SECONDS:
      return
    self.last = now
    rate = done / (now - self.start)
    eta = (self.total - done) / rate if rate else float('inf')
    logging.info('%s: %d / %d images (%.1f%%), %.0f images/s, ETA %s.', self.what, done,
                 self.total, 100 * done / max(self.total, 1), rate,
                 time.strftime('%H:%M:%S', time.gmtime(eta)) if eta < 8.64e5 else '?')


class _SquareStore(tfds_data.OwnWords, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The squares of every split of the source; one config per (source, R, encoding)."""

  VERSION = tfds.core.Version(VERSION)

  def __init__(self, cfg: DataConfig):
    self._cfg = cfg
    self._source = tfds_data.prepared_builder(cfg)
    self._means: dict[str, np.ndarray] = {}
    super().__init__(data_dir=_root(cfg), config=config_name(cfg))

  def _info(self) -> tfds.core.DatasetInfo:
    cfg, size = self._cfg, self._cfg.resize_size
    if cfg.store == 'jpeg':
      image = tfds.features.Image(shape=(size, size, 3), encoding_format='jpeg')
    else:
      image = tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8,
                                   encoding=tfds.features.Encoding.BYTES)
    label = self._source.info.features[tfds_data.label_keys(self._source)[1]]
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'The central {size}x{size} squares of {cfg.dataset} (shorter side '
                    f'resized to {size}), as {config_name(cfg)}.',
        features=tfds.features.FeaturesDict({
            'image': image, 'label': tfds.features.ClassLabel(names=label.names),
            'file_name': tfds.features.Text()}),
        supervised_keys=('image', 'label'),
        # The source's order: a slice such as 'train[90%:]' holds the same examples.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything comes from the prepared source
    return {split: self._generate_examples(split) for split in self._source.info.splits}

  def _squares(self, split: str) -> tf.data.Dataset:
    """Batches of {'square', 'label', 'file_name', 'sum' (int32 R x R x 3)[, 'jpeg']}."""
    cfg, source = self._cfg, self._source
    image_key, label_key = tfds_data.label_keys(source)
    is_jpeg, has_names = tfds_data.is_jpeg(source), 'file_name' in source.info.features
    ds = source.as_dataset(split, shuffle_files=False,
                           decoders={image_key: tfds.decode.SkipDecoding()})

    def square(example):
      pixels = augment.central_square(example[image_key], cfg.resize_size, is_jpeg)
      out = {'square': pixels, 'label': example[label_key],
             'file_name': example['file_name'] if has_names else tf.constant('')}
      if cfg.store == 'jpeg':
        # Optimized Huffman tables: smaller, and faster to decode (docs/PERFORMANCE.md).
        out['jpeg'] = tf.io.encode_jpeg(pixels, quality=cfg.store_quality, optimize_size=True)
      return out

    ds = ds.map(square, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(_BATCH)
    ds = ds.map(lambda b: dict(b, sum=tf.reduce_sum(tf.cast(b['square'], tf.int32), axis=0)))
    return ds.prefetch(tf.data.AUTOTUNE)

  def _generate_examples(self, split: str):
    total, count = np.zeros((self._cfg.resize_size,) * 2 + (3,), np.float64), 0
    progress = _Progress(f'{config_name(self._cfg)} {split}',
                         self._source.info.splits[split].num_examples)
    for batch in self._squares(split).as_numpy_iterator():
      total += batch['sum']
      images = batch['jpeg'] if self._cfg.store == 'jpeg' else batch['square']
      for image, label, name in zip(images, batch['label'], batch['file_name']):
        yield count, {'image': image, 'label': label, 'file_name': name.decode()}
        count += 1
      progress.update(count)
    self._means[split] = (total / max(count, 1)).astype(np.float32)

  def _download_and_prepare(self, dl_manager, download_config):
    start, cpu_start = time.perf_counter(), time.process_time()
    super()._download_and_prepare(dl_manager, download_config)
    # self.data_dir is TFDS's temporary folder here: these land in the store atomically.
    for split, mean in self._means.items():
      with tf.io.gfile.GFile(mean_image_path(self._cfg, split, self.data_dir), 'wb') as f:
        np.save(f, mean)
    shards = [os.path.basename(i.filename) for split in self.info.splits.values()
              for i in split.file_instructions]
    index = io.BytesIO()  # zip files need seeking, which GFile writers lack
    np.savez(index, **{name: _index_shard(os.path.join(self.data_dir, name))
                       for name in shards})
    with tf.io.gfile.GFile(os.path.join(self.data_dir, INDEX), 'wb') as f:
      f.write(index.getvalue())
    splits = self.info.splits.values()
    facts = dict(_facts(self._cfg), source_version=str(self._source.version),
                 images=sum(s.num_examples for s in splits),
                 bytes=sum(s.num_bytes for s in splits),
                 seconds=round(time.perf_counter() - start, 3),
                 cpu_seconds=round(time.process_time() - cpu_start, 3),  # every thread
                 splits={s.name: {'images': s.num_examples, 'bytes': s.num_bytes}
                         for s in splits})
    with tf.io.gfile.GFile(os.path.join(self.data_dir, FACTS), 'w') as f:
      json.dump(facts, f, indent=1)


def prepare(cfg: DataConfig, repair: bool = False) -> dict | None:
  """Writes cfg's store from its prepared source, unless it is there already.

  Returns its facts (read_facts), None if the store was there (nothing is touched then).
  A store that is there but damaged (a file missing or unreadable) raises DamagedStoreError,
  unless `repair`: then every record's CRC is checked too, and a damaged store is moved
  aside (to VERSION.damaged-<time>, for the user to delete) and prepared again.
  """
  path = store_dir(cfg)
  if tf.io.gfile.isdir(path) and not repair:
    open_store(cfg)  # checks its files, and that it is this run's store
    return None
  damage = _checked_files(cfg, records=True) if tf.io.gfile.isdir(path) else 'missing'
  if damage is None:
    open_store(cfg)
    return None
  with tfds_data.preparing(path):
    if damage != 'missing':
      aside = f'{path}.damaged-{time.strftime("%Y%m%d-%H%M%S")}'
      tf.io.gfile.rename(path, aside)
      logging.warning('The store in %s is damaged (%s): moved to %s (delete it once the new '
                      'one is prepared); preparing it again.', path, damage, aside)
    open_store.cache_clear()
    if tf.io.gfile.isdir(path):  # another preparation made it while this one waited
      open_store(cfg)
      return None
    return _build(cfg)


def _build(cfg: DataConfig) -> dict:
  """Writes cfg's store (and first its source, if that is not prepared); returns its facts."""
  tfds_data.prepare(cfg)

  class AlexnetSquares(_SquareStore, skip_registration=True):  # TFDS's name: alexnet_squares
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config_name(cfg))]

  builder = tfds_data.construct(AlexnetSquares, cfg)
  logging.info('Preparing the %s store of %s (%dx%d squares) in %s%s', cfg.store, cfg.dataset,
               cfg.resize_size, cfg.resize_size, store_dir(cfg), _older_note(cfg))
  # TFDS holds up to 1 GB of examples in Python objects while it writes, which sets off
  # full collections; each rescans the millions of objects TF and JAX made at import
  # (0.36 s each here). Frozen, they are left out.
  gc.freeze()
  try:
    builder.download_and_prepare()
  finally:
    gc.unfreeze()
  facts = read_facts(cfg)
  logging.info('Prepared %s', summary(facts))
  return facts


def summary(facts: dict) -> str:
  """One line: a store's size and how long its preparation took."""
  per_image = max(facts['images'], 1)
  return (f"{facts['encoding']} store of {facts['source']} at {facts['resize_size']} px: "
          f"{facts['images']} images, {facts['bytes'] / 1e9:.2f} GB "
          f"({facts['bytes'] / per_image:,.0f} bytes per image), written in "
          f"{facts['seconds']:.1f} s ({1000 * facts['seconds'] / per_image:.2f} ms per image; "
          f"{1000 * facts['cpu_seconds'] / per_image:.2f} ms of CPU per image, all threads)")


if __name__ == '__main__':  # the command line this module had
  raise SystemExit('square_store: preparing a store is now a mode of the entry point: '
                   'python -m alexnet_jax.main --mode=prepare --data_dir=DIR [--manual_dir=TARS] '
                   '--image_size=227 --store=jpeg')
