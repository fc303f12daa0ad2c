"""Training batches of the store, each square read straight into its batch (no TensorFlow).

The store's records are TFRecords of tf.train.Example written by TFDS; its index
(square_store.py, made while preparing) gives each record's label and where its image
bytes lie in its file. A batch is then, per square, one read and (for the JPEG store) one
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
from typing import Iterator, Sequence

import numpy as np

from alexnet_jax.config import UserError

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


def _permutation(seed: int, epoch: int, count: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(count)


def train_batches(shards: Sequence[tuple[str, np.ndarray]], size: int, batch_size: int, *,
                  seed: int, start_position: int = 0, jpeg: bool,
                  workers: int | None = None) -> Iterator[dict]:
  """Endless {'images': uint8 (b, R, R, 3), 'labels': int32 (b,)} from `start_position` on.

  Args:
    shards: (file, rows) of this reader's examples, in order; rows is int64 (k, 3): each
      example's image offset in the file, its length in bytes and its label.
    size: R.
    jpeg: the images are JPEGs (else R*R*3 raw bytes).
    workers: threads reading and decoding (default: the cores); both release the GIL.
  """
  if jpeg:
    import simplejpeg  # pylint: disable=import-outside-toplevel
  rows = np.concatenate([np.zeros((0, 4), np.int64)] + [  # (file, offset, length, label)
      np.concatenate([np.full((len(r), 1), i), r], axis=1) for i, (_, r) in enumerate(shards)])
  count = len(rows)
  if not count:
    raise ValueError('no examples to train on.')
  files = [os.open(path, os.O_RDONLY) for path, _ in shards]
  threads = workers or len(os.sched_getaffinity(0))
  pool = concurrent.futures.ThreadPoolExecutor(threads)
  permutations = {}
  buffers = BatchBuffers((batch_size, size, size, 3))

  def read(images, picked, lo, hi):
    for j in range(lo, hi):
      file, offset, length, _ = (int(v) for v in picked[j])
      if jpeg:
        data = os.pread(files[file], length, offset)
        if len(data) == length:
          simplejpeg.decode_jpeg(data, 'RGB', buffer=images[j])
          continue
      elif os.preadv(files[file], [images[j]], offset) == length:
        continue
      raise UserError(f'{shards[file][0]} ends before the square at byte {offset}: the '
                      'store is damaged; move it away and prepare it again.')

  try:
    position = start_position
    while True:
      epochs, within = np.divmod(position + np.arange(batch_size), count)
      permutations = {e: permutations[e] if e in permutations else _permutation(seed, e, count)
                      for e in set(epochs.tolist())}
      picked = rows[[permutations[e][i] for e, i in zip(epochs.tolist(), within.tolist())]]
      images = buffers.take()
      bounds = np.linspace(0, batch_size, threads + 1).astype(int)
      for done in [pool.submit(read, images, picked, lo, hi)
                   for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]:
        done.result()
      position += batch_size
      yield {'images': images, 'labels': picked[:, 3].astype(np.int32)}
  finally:
    pool.shutdown()
    for file in files:
      os.close(file)
