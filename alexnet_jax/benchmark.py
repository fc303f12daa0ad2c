"""--mode=benchmark: training-step throughput on synthetic batches already on the devices.

The full training step (PCA noise, mean subtraction, sharded forward and backward, the
paper's SGD) runs on uint8 batches made once on the devices, so the input pipeline is
never the bottleneck. Warm-up steps, then `repeats` timed windows of `steps` steps each;
the median and spread of images/s over the windows are reported.

FLOP convention: a trained image costs 3 x the forward multiply-adds x 2 FLOPs
(forward + backward as 2 x forward): 4.35 GFLOP for the paper's net. MFU divides the
achieved FLOP/s by the device's dense peak at the compute dtype (table below, or
--peak_tflops).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time

from absl import logging
import flax
import jax
import numpy as np
import optax

from alexnet_jax import preprocess
from alexnet_jax import summary
from alexnet_jax import synthetic_data
from alexnet_jax import train

# Dense peak TFLOP/s per chip (vendor datasheets, without sparsity): bf16, float32.
# float32 matmuls run as TF32 on NVIDIA by default in XLA.
PEAK_TFLOPS = {
    'H100': (989.0, 494.7), 'H200': (989.0, 494.7), 'A100': (312.0, 156.0),
    'TPU v4': (275.0, 275.0), 'TPU v5 lite': (197.0, 197.0), 'TPU v5p': (459.0, 459.0),
}


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
  images_per_second: float          # median over the timed windows
  images_per_second_min: float
  images_per_second_max: float
  step_seconds: float               # median step time
  flops_per_image: float
  mfu: float | None                 # None when the device's peak is unknown
  peak_memory_bytes: int | None
  batch_size: int
  mesh: dict
  dtype: str
  device: str
  devices: int
  versions: dict


def flops_per_trained_image(model_config) -> float:
  macs = sum(row['macs'] for row in summary.layer_rows(model_config))
  return 3 * 2 * macs


def peak_flops(device_kind: str, dtype: str, override_tflops: float | None) -> float | None:
  if override_tflops:
    return override_tflops * 1e12
  for name, (bf16, f32) in PEAK_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return (bf16 if dtype == 'bfloat16' else f32) * 1e12
  return None


def _peak_memory() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def measure(model_config, opt_config, mesh, batch_size: int, *, warmup: int = 3,
            steps: int = 10, repeats: int = 5, peak_tflops: float | None = None,
            seed: int = 0) -> BenchmarkResult:
  """Times the training step; see the module docstring."""
  trainer = train.Trainer(model_config, opt_config, mesh, batch_size=batch_size,
                          total_steps=warmup + steps * repeats,
                          normalizer=preprocess.Normalizer(preprocess.CHANNEL_MEAN),
                          pca_std=0.1, seed=seed)
  batches = synthetic_data.synthetic_batches(batch_size, model_config.image_size,
                                             model_config.num_classes, mesh, seed=seed)
  with jax.set_mesh(mesh):
    state = trainer.init_state(jax.random.key(seed))
    for _ in range(warmup):
      state, metrics = trainer.step(state, next(batches))
    jax.block_until_ready(metrics)
    windows = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = trainer.step(state, next(batches))
      jax.block_until_ready((state, metrics))
      windows.append(time.perf_counter() - start)
  rates = [steps * batch_size / seconds for seconds in windows]
  rate = statistics.median(rates)
  flops = flops_per_trained_image(model_config)
  device = jax.devices()[0].device_kind
  peak = peak_flops(device, model_config.dtype, peak_tflops)
  return BenchmarkResult(
      images_per_second=rate, images_per_second_min=min(rates),
      images_per_second_max=max(rates), step_seconds=statistics.median(windows) / steps,
      flops_per_image=flops, mfu=(rate * flops / (peak * jax.device_count()) if peak else None),
      peak_memory_bytes=_peak_memory(), batch_size=batch_size, mesh=dict(mesh.shape),
      dtype=model_config.dtype, device=device, devices=jax.device_count(),
      versions={'python': platform.python_version(), 'jax': jax.__version__,
                'jaxlib': jax.lib.__version__ if hasattr(jax.lib, '__version__') else '',
                'flax': flax.__version__, 'optax': optax.__version__,
                'numpy': np.__version__})


def report(result: BenchmarkResult) -> str:
  spread = f'{result.images_per_second_min:,.0f}..{result.images_per_second_max:,.0f}'
  mfu = f'{100 * result.mfu:.1f}%' if result.mfu is not None else 'n/a (unknown peak)'
  memory = (f'{result.peak_memory_bytes / 2**30:.2f} GiB' if result.peak_memory_bytes
            else 'n/a')
  return '\n'.join([
      f'device: {result.devices} x {result.device}, mesh {result.mesh}, {result.dtype}, '
      f'global batch {result.batch_size}',
      f'images/s: {result.images_per_second:,.0f} (median; windows {spread})',
      f'step time: {1000 * result.step_seconds:.2f} ms',
      f'MFU: {mfu} at {result.flops_per_image / 1e9:.2f} GFLOP per trained image '
      '(3 x forward, 2 FLOPs per multiply-add)',
      f'peak device memory: {memory}',
      f'versions: {result.versions}'])


def run(model_config, opt_config, train_config, mesh, workdir: str | None, *,
        steps: int = 10, repeats: int = 5, peak_tflops: float | None = None) -> BenchmarkResult:
  """--mode=benchmark: measure, print, and write WORKDIR/benchmark.json (if a workdir)."""
  result = measure(model_config, opt_config, mesh, train_config.batch_size, steps=steps,
                   repeats=repeats, peak_tflops=peak_tflops, seed=train_config.seed)
  if jax.process_index() == 0:
    print(report(result))
    if workdir:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, 'benchmark.json')
      with open(path, 'w') as f:
        json.dump(dataclasses.asdict(result), f, indent=2, sort_keys=True)
      logging.info('Wrote %s', path)
  return result
