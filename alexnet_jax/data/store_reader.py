"""Training batches of the store, each square read straight into its batch (no TensorFlow).

The store's records are TFRecords of tf.train.Example written by TFDS; its index
(square_store.py, made while preparing) gives each record's label and where its image
bytes lie in its file. A batch is then, per square, one read of its record, the record's
CRC-32C checked (as tf.data's reader would), and (for the JPEG store) one
libjpeg-turbo decode (simplejpeg, the same accurate IDCT and upsampling as TF's decoder:
the same pixels) into a 64-byte aligned buffer, which JAX takes as it is on the CPU (and
copies to an accelerator from). Buffers are used again once nothing refers to the batch
they held: a fresh 50 MB batch costs the kernel's zeroing and page faults. tf.data's
TFRecord reader, parser and batching copy each square four to five times (what that costs:
docs/PERFORMANCE.md).

The stream: this reader's examples (its part of the split), each epoch in a permutation
seeded by (seed, epoch). A batch holds the next b stream positions, so a run that resumes
at position P (the examples this reader had read) reads exactly what an uninterrupted one
did, reading nothing twice.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from typing import Iterator, Sequence

import google_crc32c
import numpy as np
import simplejpeg

from alexnet_jax.config import UserError
from alexnet_jax.data.square_store import (IMAGE_LENGTH, IMAGE_OFFSET, LABEL, RECORD_LENGTH,
                                           RECORD_OFFSET, crc_matches)

_ALIGN = 64  # what XLA's CPU client needs to use host memory without a copy


class BatchBuffers:
  """Uninitialized uint8 arrays of one shape, 64-byte aligned, each handed out again only
  when nothing refers to it any more.

  A batch given to JAX stays referenced while JAX uses it: on the CPU its array aliases the
  buffer, and a transfer to an accelerator holds it until the copy is done. So a buffer no
  object refers to (its batch, a view, an array made from it) is free to overwrite.
  """

  def __init__(self, shape: tuple[int, ...], keep: int = 8):
    self._shape, self._keep = shape, keep
    self._owners = []  # the allocations, at most `keep`

  def take(self) -> np.ndarray:
    for owner in self._owners:
      if sys.getrefcount(owner) == 3:  # self._owners, `owner` and getrefcount's argument
        return self._aligned(owner)
    owner = np.empty(int(np.prod(self._shape)) + _ALIGN, np.uint8)
    if len(self._owners) < self._keep:
      self._owners.append(owner)
    return self._aligned(owner)

  def _aligned(self, owner: np.ndarray) -> np.ndarray:
    start = (-owner.ctypes.data) % _ALIGN
    return owner[start:start + owner.size - _ALIGN].reshape(self._shape)


class DamagedRecordError(UserError):
  """A record of the store does not match the checksum written with it."""


class DamagedRecords:
  """What to do with a record whose checksum fails: stop (one line), or skip and count."""

  def __init__(self, skip: bool, repair: str):
    self.skip, self.repair, self.count = skip, repair, 0  # repair: the command that does
    self._lock = threading.Lock()

  def found(self, path: str, record: int, why: str) -> None:
    if not self.skip:
      raise DamagedRecordError(
          f'record {record} of {path} is damaged ({why}): the store is damaged. Prepare it '
          f'again with: {self.repair} (or pass --skip_damaged_records to train past '
          'damaged records).')
    with self._lock:
      self.count += 1


def _read_record(fd: int, row, image: np.ndarray, jpeg: bool) -> str | None:
  """Reads one record's square into `image` after checking its CRC; why not, if it fails.

  The record's serialized example is read whole (the raw store's square straight into the
  batch, the bytes around it apart) and its CRC-32C compared with the one TFRecord wrote
  after it: any damaged byte is found before the square is used.
  """
  offset, length, record_offset, record_length = (int(row[k]) for k in (
      IMAGE_OFFSET, IMAGE_LENGTH, RECORD_OFFSET, RECORD_LENGTH))
  before = offset - record_offset
  if jpeg:
    data = os.pread(fd, record_length + 4, record_offset)
    if len(data) != record_length + 4:
      return 'the file ends inside it'
    crc = google_crc32c.value(data[:-4])
    stored = data[-4:]
  else:
    head, tail = bytearray(before), bytearray(record_length + 4 - before - length)
    if os.preadv(fd, [head, image, tail], record_offset) != record_length + 4:
      return 'the file ends inside it'
    crc = google_crc32c.extend(google_crc32c.extend(google_crc32c.value(bytes(head)), image),
                               bytes(tail[:-4]))
    stored = tail[-4:]
  if not crc_matches(crc, stored):
    return 'its checksum does not match'
  if jpeg:
    try:
      simplejpeg.decode_jpeg(data[before:before + length], 'RGB', buffer=image)
    except ValueError as error:  # whole as written, yet no square of this size
      return f'its image does not decode: {error}'
  return None


def _permutation(seed: int, epoch: int, count: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(count)


def train_batches(shards: Sequence[tuple[str, int, np.ndarray]], size: int, batch_size: int, *,
                  seed: int, start_position: int = 0, jpeg: bool, damaged: DamagedRecords,
                  workers: int | None = None) -> Iterator[dict]:
  """Endless {'images': uint8 (b, R, R, 3), 'labels': int32 (b,)} from `start_position` on.

  Args:
    shards: (file, its first record's number, rows) of this reader's examples, in order;
      rows is square_store.record_index's for those records.
    size: R.
    jpeg: the images are JPEGs (else R*R*3 raw bytes).
    damaged: stops at a record whose checksum fails, or skips it: its place in the batch
      takes a copy of another square of the batch (image and label).
    workers: threads reading and decoding (default: the cores); both release the GIL.
  """
  rows = np.concatenate([np.zeros((0, 7), np.int64)] + [  # file, record number, the index's
      np.concatenate([np.full((len(r), 1), i), first + np.arange(len(r))[:, None], r], axis=1)
      for i, (_, first, r) in enumerate(shards)])
  count = len(rows)
  if not count:
    raise ValueError('no examples to train on.')
  files = [os.open(path, os.O_RDONLY) for path, _, _ in shards]
  threads = workers or len(os.sched_getaffinity(0))
  pool = concurrent.futures.ThreadPoolExecutor(threads)
  permutations = {}
  buffers = BatchBuffers((batch_size, size, size, 3))

  def read(images, picked, lo, hi) -> list[int]:
    bad = []
    for j in range(lo, hi):
      file, record = int(picked[j, 0]), int(picked[j, 1])
      why = _read_record(files[file], picked[j, 2:], images[j], jpeg)
      if why:
        damaged.found(shards[file][0], record, why)
        bad.append(j)
    return bad

  try:
    position = start_position
    while True:
      epochs, within = np.divmod(position + np.arange(batch_size), count)
      permutations = {e: permutations[e] if e in permutations else _permutation(seed, e, count)
                      for e in set(epochs.tolist())}
      picked = rows[[permutations[e][i] for e, i in zip(epochs.tolist(), within.tolist())]]
      images, labels = buffers.take(), picked[:, 2 + LABEL].astype(np.int32)
      bounds = np.linspace(0, batch_size, threads + 1).astype(int)
      bad = sorted(j for done in [pool.submit(read, images, picked, lo, hi)
                                  for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
                   for j in done.result())
      if bad:  # skipped: a copy of a good square of the batch takes each one's place
        good = sorted(set(range(batch_size)) - set(bad))
        if not good:
          raise DamagedRecordError(f'every record of a batch is damaged: {damaged.repair}')
        for j in bad:
          images[j], labels[j] = images[good[j % len(good)]], labels[good[j % len(good)]]
      position += batch_size
      yield {'images': images, 'labels': labels}
  finally:
    pool.shutdown()
    for file in files:
      os.close(file)
