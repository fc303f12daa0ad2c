"""--mode=benchmark --benchmark=input: the training input's images per CPU-second, side by side.

Each store named by --benchmark_stores (none: the full-size images cropped on the host;
jpeg, raw: the prepared store of squares) feeds global batches onto the run's mesh for
--benchmark_seconds per window; the stores' windows are interleaved, in an order rotated
every repeat, so that other jobs' load falls on all alike (with --benchmark_quiet each
window first waits, up to 2 minutes, until the CPUs are that idle). The CPU figure counts
every thread of this process: a per-core rate that holds when other work shares the
machine. After each JPEG window its ceiling is measured in the same minute: the store's
squares decoded alone, one thread, from memory (this machine's speed moves between minutes).

Without --data_dir it measures made-up photo data: --benchmark_photos 500x375 crops of a
real photograph per class (8 classes, quality 90), written into a temporary folder and
removed after.

  python -m alexnet_jax.main --mode=benchmark --benchmark=input --benchmark_stores=none,jpeg,raw \
      --batch_size=256 --benchmark_quiet=0.15
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import statistics
import tempfile
import time
from typing import NamedTuple, Sequence

import jax
import numpy as np
import simplejpeg

from alexnet_jax.config import BenchmarkConfig, DataConfig
from alexnet_jax.data import dataset
from alexnet_jax.data import demo_data
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import square_store
from alexnet_jax.tools import measure


class Window(NamedTuple):
  """One timed window of a pipeline."""
  images_per_s: float
  images_per_cpu_s: float      # every thread of this process counted
  others: float                # share of the CPUs other processes used
  decoder_alone: float | None  # the JPEG store only: its decoder alone right after (ceiling)


def window(cfg: DataConfig, batch_size: int, seconds: float, mesh,
           start_examples: int) -> Window:
  """One window of cfg's global training batches on the mesh, after a warm-up."""
  batches = input_pipeline.train_batches(cfg, batch_size, mesh, start_examples=start_examples)
  for _ in range(3):  # warm up: fill the shuffle buffer and the prefetch queues
    jax.block_until_ready(next(batches))
  images, timing = measure.timed(functools.partial(_read, batches, batch_size, seconds))
  del batches  # its reader's threads stop before the ceiling is timed
  ceiling = jpeg_decode_rate(cfg, seconds / 2) if cfg.store == 'jpeg' else None
  return Window(images / timing.wall, images / timing.cpu, timing.others, ceiling)


def _read(batches, batch_size: int, seconds: float) -> int:
  """Images read in `seconds`."""
  images, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    jax.block_until_ready(next(batches))
    images += batch_size
  return images


def compare(cfgs: Sequence[DataConfig], batch_size: int, seconds: float, repeats: int, mesh,
            quiet: float = 0.0) -> list[list[Window]]:
  """The windows of each config, per repeat, interleaved (module docstring)."""
  results = [[] for _ in cfgs]
  for repeat in range(repeats):
    for i in [(repeat + k) % len(cfgs) for k in range(len(cfgs))]:
      if quiet:
        measure.wait_until_quiet(quiet, max_wait=120)
      results[i].append(window(cfgs[i], batch_size, seconds, mesh,
                               start_examples=repeat * 1000 * batch_size))
      gc.collect()  # the window's pipeline and its threads are gone before the next starts
  return results


def jpeg_decode_rate(cfg: DataConfig, seconds: float = 5.0) -> float:
  """Images per CPU-second of decoding the JPEG store's squares alone (one thread, from
  memory): the ceiling of its reader."""
  name, rows = next(iter(square_store.record_index(cfg).items()))
  offsets, lengths = (rows[:256, k] for k in (square_store.IMAGE_OFFSET,
                                               square_store.IMAGE_LENGTH))
  with open(os.path.join(square_store.store_dir(cfg), name), 'rb') as f:
    data = f.read(int((offsets + lengths).max()))
  jpegs = [data[offset:offset + length] for offset, length in zip(offsets, lengths)]
  square = np.empty((cfg.resize_size, cfg.resize_size, 3), np.uint8)

  def decode() -> int:
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      for jpeg in jpegs:
        simplejpeg.decode_jpeg(jpeg, 'RGB', buffer=square)
      images += len(jpegs)
    return images

  images, timing = measure.timed(decode)
  return images / timing.cpu


def _lines(cfg: DataConfig, windows: list[Window], batch_size: int) -> list[str]:
  wall, per_cpu, others = (statistics.median(getattr(w, field) for w in windows)
                           for field in ('images_per_s', 'images_per_cpu_s', 'others'))
  cores = measure.cores()
  lines = [f'store={cfg.store} augment={cfg.augment} image_size={cfg.image_size} '
           f'resize={cfg.resize_size} batch={batch_size}: runs '
           f'{", ".join(f"{w.images_per_s:.0f}" for w in windows)} images/s; median '
           f'{wall:.0f} images/s on {cores} cores ({wall / cores:.0f} per core), other '
           f'processes using {others:.0%} of the CPUs; {per_cpu:.0f} images per CPU-second '
           'of this process.']
  if cfg.store == 'jpeg':
    ceiling = statistics.median(w.decoder_alone for w in windows)
    shares = ', '.join(f'{w.images_per_cpu_s / w.decoder_alone:.0%}' for w in windows)
    lines.append(f'  its ceiling: decoding its squares alone, one thread, from memory, right '
                 f'after each run: {ceiling:.0f} images per CPU-second; the reader reached '
                 f'{shares} of it.')
  return lines


def run(data_config: DataConfig, options: BenchmarkConfig, batch_size: int, mesh) -> str:
  """Prepares each store (and, without --data_dir, photo data to read), then compares."""
  with tempfile.TemporaryDirectory(prefix='alexnet_jax_input_benchmark_') as scratch:
    if data_config.data_dir is None:
      manual_dir = os.path.join(scratch, 'manual')
      demo_data.write_demo_imagenet(manual_dir, options.benchmark_photos, oddities=False,
                                    photos=True)
      data_config = dataclasses.replace(data_config, data_dir=os.path.join(scratch, 'tfds'),
                                        manual_dir=manual_dir)
    cfgs = [dataclasses.replace(data_config, store=store) for store in options.benchmark_stores]
    lines = []
    for cfg in cfgs:
      dataset.prepare(cfg)
      if cfg.store != 'none':
        lines.append(f'Store: {square_store.summary(square_store.read_facts(cfg))}.')
    results = compare(cfgs, batch_size, options.benchmark_seconds, options.benchmark_repeats,
                      mesh, options.benchmark_quiet)
    for cfg, windows in zip(cfgs, results):
      lines += _lines(cfg, windows, batch_size)
  return '\n'.join(lines)
