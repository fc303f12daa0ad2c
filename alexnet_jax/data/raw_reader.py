"""Training batches of the raw store: each square read straight into its batch (no TF).

The raw store's records are TFRecords of tf.train.Example written by TFDS; its index
(square_store.py, made while preparing) gives each record's label and the file offset
of its R x R x 3 pixels. A batch is then one read per square into a fresh 64-byte
aligned buffer, which JAX takes as it is on the CPU (and copies to an accelerator from):
one copy per image, where tf.data's TFRecord reader, parser and batching make five and
check a CRC (10x fewer images per CPU-second here; docs/PERFORMANCE.md).

The stream: this reader's examples (its part of the split), each epoch in a permutation
seeded by (seed, epoch). A batch holds the next b stream positions, so a run that resumes
at position P (the examples this reader had read) reads exactly what an uninterrupted one
did, reading nothing twice.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Iterator, Sequence

import numpy as np

from alexnet_jax.config import UserError

_ALIGN = 64  # what XLA's CPU client needs to use host memory without a copy


def aligned_empty(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
  """An uninitialized array whose data starts at a multiple of 64 bytes."""
  nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
  raw = np.empty(nbytes + _ALIGN, np.uint8)
  start = (-raw.ctypes.data) % _ALIGN
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def _permutation(seed: int, epoch: int, count: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(count)


def train_batches(shards: Sequence[tuple[str, np.ndarray]], size: int, batch_size: int, *,
                  seed: int, start_position: int = 0,
                  workers: int | None = None) -> Iterator[dict]:
  """Endless {'images': uint8 (b, R, R, 3), 'labels': int32 (b,)} from `start_position` on.

  Args:
    shards: (file, rows) of this reader's examples, in order; rows is int64 (k, 2):
      each example's pixel offset in the file and its label.
    size: R.
    workers: threads reading (default: the cores); reads release the GIL.
  """
  rows = np.concatenate([np.zeros((0, 3), np.int64)] + [  # (file, offset, label)
      np.stack([np.full(len(r), i), r[:, 0], r[:, 1]], axis=1) for i, (_, r) in enumerate(shards)])
  count, pixels = len(rows), size * size * 3
  if not count:
    raise ValueError('no examples to train on.')
  files = [os.open(path, os.O_RDONLY) for path, _ in shards]
  threads = workers or os.cpu_count()
  pool = concurrent.futures.ThreadPoolExecutor(threads)
  permutations = {}

  def read(images, picked, lo, hi):
    for j in range(lo, hi):
      file, offset, _ = picked[j]
      if os.preadv(files[file], [images[j]], offset) != pixels:
        raise UserError(f'{shards[file][0]} ends before the square at byte {offset}: the raw '
                      'store is damaged; prepare it again.')

  try:
    position = start_position
    while True:
      epochs, within = np.divmod(position + np.arange(batch_size), count)
      permutations = {e: permutations[e] if e in permutations else _permutation(seed, e, count)
                      for e in set(epochs.tolist())}
      picked = rows[[permutations[e][i] for e, i in zip(epochs.tolist(), within.tolist())]]
      images = aligned_empty((batch_size, pixels))
      bounds = np.linspace(0, batch_size, threads + 1).astype(int)
      for done in [pool.submit(read, images, picked, lo, hi)
                   for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]:
        done.result()
      position += batch_size
      yield {'images': images.reshape(batch_size, size, size, 3),
             'labels': picked[:, 2].astype(np.int32)}
  finally:
    pool.shutdown()
    for file in files:
      os.close(file)
