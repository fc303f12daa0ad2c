"""--mode=benchmark: training-step throughput on synthetic batches already on the devices.

The full training step (PCA noise, mean subtraction, sharded forward and backward, the
paper's SGD) runs on uint8 batches made once on the devices, so the input pipeline is
never the bottleneck. With `squares` (the default --store=jpeg|raw) the batches are the
store's R x R squares and the step also takes the random crops and flips
(device_augment.py); with --store=none they are the host's S x S crops. The step is
compiled ahead of time (compile time and XLA's memory estimate are reported apart from
the timing), run for warm-up steps, then for `repeats` timed windows of `steps` steps
each, dispatched back to back with no host sync until the window's end; the median and
spread of images/s over the windows are reported.
With --profile_steps=N, N more steps run under the JAX profiler afterwards (never inside
a timed window) and the device time of the compiled step is broken down by XLA op (on
the CPU, with the process's CPU time beside it: see StepTimer.profile).

FLOP convention: a trained image costs 3 x the forward multiply-adds x 2 FLOPs
(forward + backward as 2 x forward): 4.35 GFLOP for the paper's net. MFU divides the
achieved FLOP/s by the devices' dense peak at the compute dtype (table below, or
--peak_tflops).

Needs no TensorFlow: nothing here or in what it imports touches the input pipeline.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import importlib.metadata
import json
import os
import platform
import re
import statistics
import time

from absl import logging
import jax

from alexnet_jax import config
from alexnet_jax import device_augment
from alexnet_jax import preprocess
from alexnet_jax import synthetic_data
from alexnet_jax import train
from alexnet_jax.config import BenchmarkConfig
from alexnet_jax.tools import communication
from alexnet_jax.tools import measure as measure_lib
from alexnet_jax.tools import summary

# Dense peak TFLOP/s per chip (vendor datasheets, without sparsity): bf16, float32.
# float32 matmuls run as TF32 on NVIDIA by default in XLA.
PEAK_TFLOPS = {
    'H100': (989.0, 494.7), 'H200': (989.0, 494.7), 'A100': (312.0, 156.0),
    'TPU v4': (275.0, 275.0), 'TPU v5 lite': (197.0, 197.0), 'TPU v5p': (459.0, 459.0),
}
WARMUP_STEPS = 3
FLOP_CONVENTION = '3 x forward multiply-adds x 2 FLOPs per trained image'
_PACKAGES = ('jax', 'jaxlib', 'jax-cuda12-plugin', 'jax-cuda13-plugin', 'libtpu', 'flax',
             'optax', 'numpy')


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
  images_per_second: float          # median over the timed windows
  images_per_second_min: float
  images_per_second_max: float
  images_per_second_windows: list
  images_per_cpu_second: float      # median; CPU-seconds of this process, all its threads
  step_seconds: float               # median step time
  compile_seconds: float
  warmup_steps: int
  steps_per_window: int
  flops_per_image: float
  flop_convention: str
  mfu: float | None                 # None when the device's peak is unknown
  peak_memory_bytes: int | None     # the runtime's peak on this process's first device
                                    # of the mesh (None on the CPU)
  compiled_memory_bytes: int        # XLA's peak estimate for one device's program
  batch_size: int
  input: str                        # what the step gets: the host's crops or the squares
  mesh: dict
  model: dict
  dtype: str
  device: str
  platform: str
  devices: int
  processes: int
  host: dict                        # CPU model, cores, load average before/after, XLA_FLAGS
  versions: dict
  profile: dict | None              # --profile_steps: device time by XLA op


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


class StepTimer:
  """The compiled training step on synthetic batches already on the devices."""

  def __init__(self, model_config, opt_config, mesh, batch_size: int, *, seed: int = 0,
               squares: bool = False):
    self.mesh = mesh
    size = model_config.image_size
    if squares:  # the store's R x R squares: the step crops and flips them too
      normalizer = device_augment.SquareAugmenter(preprocess.CHANNEL_MEAN, None, size)
      size = config.resize_size(size)
    else:
      normalizer = preprocess.Normalizer(preprocess.CHANNEL_MEAN)
    self.input = (f'uint8 {size}x{size} squares, cropped and flipped in the step' if squares
                  else f'uint8 {size}x{size} crops')
    step = train.make_train_step(model_config, opt_config, mesh, batch_size=batch_size,
                                 total_steps=1_000_000, normalizer=normalizer, pca_std=0.1,
                                 seed=seed)
    self._batches = synthetic_data.synthetic_batches(batch_size, size,
                                                     model_config.num_classes, mesh, seed=seed)
    with jax.set_mesh(mesh):
      self._state = train.init_state(model_config, opt_config, mesh, jax.random.key(seed))
      start = time.perf_counter()
      self.compiled = step.lower(self._state, next(self._batches)).compile()
      self.compile_seconds = time.perf_counter() - start

  def time(self, steps: int) -> float:
    """Seconds for `steps` steps dispatched back to back, until the last one is done."""
    start = time.perf_counter()
    for _ in range(steps):
      self._state, metrics = self.compiled(self._state, next(self._batches))
    jax.block_until_ready((self._state, metrics))
    return time.perf_counter() - start

  def profile(self, steps: int, directory: str) -> dict:
    """Runs `steps` steps under the profiler; the device time of each XLA op.

    On the CPU it also gives the process's CPU time per step: XLA's Eigen convolutions
    run asynchronously and leave no trace event of their length, so on the CPU the
    difference (mostly convolutions) is the part of the work the ops do not show.
    """
    cpu_seconds = time.process_time()
    with jax.profiler.trace(directory):
      self.time(steps)
    cpu_seconds = time.process_time() - cpu_seconds
    traces = glob.glob(os.path.join(directory, '**', '*.xplane.pb'), recursive=True)
    profile = op_breakdown(max(traces, key=os.path.getmtime), self.compiled.as_text(), steps)
    if self.mesh.devices.flat[0].platform == 'cpu':
      profile['process_cpu_ms_per_step'] = round(1000 * cpu_seconds / steps, 3)
    return profile


# ----------------------------------------------------------------------------------
# Profile breakdown: trace events named after the compiled HLO's instructions.

_INSTRUCTION = re.compile(r'\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][\w-]*)\((.*)')
_CONTROL_FLOW = ('while', 'conditional', 'call')  # their bodies' ops are traced themselves


def _instructions(hlo_text: str) -> dict:
  """name -> (opcodes inside it, custom-call targets, result shape, op_name, operands)."""
  computations, current, parsed = {}, None, {}
  for line in hlo_text.splitlines():
    head = re.match(r'^(?:ENTRY )?%(\S+) .*\{$', line)
    if head:
      current = computations.setdefault(head[1], [])
    elif current is not None and (match := _INSTRUCTION.match(line)):
      current.append(match)
  targets_of = lambda text: set(re.findall(r'custom_call_target="([^"]+)"', text))
  for lines in computations.values():
    for match in lines:
      name, shape, opcode, rest = match.groups()
      ops, targets = {opcode}, targets_of(rest)
      called = re.search(r'calls=%([\w.-]+)', rest)
      if called and opcode == 'fusion':
        for inner in computations.get(called[1], []):
          ops.add(inner[3])
          targets |= targets_of(inner[4])
      op_name = re.search(r'op_name="([^"]+)"', rest)
      operands = re.findall(r'%([\w.-]+)', rest.split(')', 1)[0])
      parsed[name] = (ops, targets, shape.split('{')[0], op_name[1] if op_name else '', operands)
  return parsed


def _category(ops: set, targets: set) -> str:
  """What an op (with the ops fused into it) mostly does; custom calls: cuDNN, cuBLAS."""
  targets = ' '.join(targets).lower()
  if 'convolution' in ops or 'conv' in targets:
    return 'convolution'
  if 'dot' in ops or 'gemm' in targets or 'matmul' in targets:
    return 'matmul'
  if ops & {'select-and-scatter', 'scatter'}:
    return 'scatter (max-pool gradient)'
  if 'reduce-window' in ops:
    return 'reduce-window (LRN sums, max-pool)'
  if ops & set(communication.COLLECTIVES):
    return 'collective'
  if ops <= {'copy', 'transpose', 'bitcast', 'parameter', 'fusion', 'slice'}:
    return 'copy / transpose / slice'
  return 'elementwise and other fusions'


def _source(name: str, instructions: dict, users: dict) -> str:
  """The JAX op_name of an instruction, else of the first neighbour that has one."""
  *_, op_name, operands = instructions[name]
  if op_name:
    return op_name
  for neighbour in (*users.get(name, ()), *operands):
    if neighbour in instructions and instructions[neighbour][3]:
      return instructions[neighbour][3] + ' (neighbour)'
  return ''


def _part(source: str) -> str:
  """'backward conv1', 'forward ReLU/LRN/pool/dropout', 'step (input, loss, optimizer)'."""
  layer = re.search(r'AlexNet/(conv\d|fc\d)/', source)
  if not layer and 'AlexNet._after' not in source:
    return 'step (input, loss, optimizer)'
  where = layer[1] if layer else 'ReLU/LRN/pool/dropout'
  return f"{'backward' if 'transpose(' in source else 'forward'} {where}"


def op_breakdown(xplane_path: str, hlo_text: str, steps: int, top: int = 15) -> dict:
  """Device time per step by category and for the top ops, from a profiler trace.

  On GPUs and TPUs the device planes' 'XLA Ops' lines hold one event per op; on the CPU
  the host threads do (one event per thread an op ran on: time summed over threads).
  Time is summed over all devices.
  """
  instructions = _instructions(hlo_text)
  planes = list(jax.profiler.ProfileData.from_file(xplane_path).planes)
  lines = [line for plane in planes if plane.name.startswith('/device:')
           for line in plane.lines if line.name == 'XLA Ops']
  if not lines:
    lines = [line for plane in planes if plane.name.startswith('/host:CPU')
             for line in plane.lines if line.name != 'python']
  per_op = collections.Counter()
  for line in lines:
    for event in line.events:
      if event.name in instructions and not instructions[event.name][0] & set(_CONTROL_FLOW):
        per_op[event.name] += event.duration_ns
  total = sum(per_op.values()) or 1
  users = collections.defaultdict(list)
  for name, (*_, operands) in instructions.items():
    for operand in operands:
      users[operand].append(name)
  sources = {name: _source(name, instructions, users) for name in per_op}
  by_category, by_part = collections.Counter(), collections.Counter()
  for name, nanoseconds in per_op.items():
    by_category[_category(*instructions[name][:2])] += nanoseconds
    by_part[_part(sources[name])] += nanoseconds
  ms = lambda nanoseconds: round(nanoseconds / steps / 1e6, 3)
  return {
      'ms_per_step': ms(total),
      'categories': [{'category': c, 'ms_per_step': ms(t), 'share': round(t / total, 4)}
                     for c, t in by_category.most_common()],
      'parts': [{'part': p, 'ms_per_step': ms(t), 'share': round(t / total, 4)}
                for p, t in by_part.most_common()],
      'top_ops': [{'op': name, 'category': _category(*instructions[name][:2]),
                   'shape': instructions[name][2], 'source': sources[name],
                   'ms_per_step': ms(t), 'share': round(t / total, 4)}
                  for name, t in per_op.most_common(top)],
  }


def format_profile(profile: dict) -> str:
  lines = [f"Device time by XLA op ({profile['ms_per_step']:.1f} ms per step, summed over "
           'devices and, on the CPU, over threads):']
  if 'process_cpu_ms_per_step' in profile:
    cpu = profile['process_cpu_ms_per_step']
    lines.append(f'  (the process used {cpu:.1f} CPU-ms per step; the '
                 f"{max(0.0, cpu - profile['ms_per_step']):.1f} ms no op shows are mostly "
                 "XLA's asynchronous Eigen convolutions, which leave no trace of their length)")
  lines += [f"  {row['share']:6.1%} {row['ms_per_step']:9.2f} ms  {row['category']}"
            for row in profile['categories']]
  lines.append('By pass and layer (ops without a JAX source take a neighbour\'s):')
  lines += [f"  {row['share']:6.1%} {row['ms_per_step']:9.2f} ms  {row['part']}"
            for row in profile['parts']]
  lines.append('Top ops:')
  lines += [f"  {row['share']:6.1%} {row['ms_per_step']:9.2f} ms  {row['op']:<28} "
            f"{row['shape']:<24} {row['source'][-70:]}" for row in profile['top_ops']]
  return '\n'.join(lines)


# ----------------------------------------------------------------------------------
# Measuring and reporting.


def _host(load_before: float) -> dict:
  return {'cpu': measure_lib.cpu_model(), 'cores': os.cpu_count(),
          'load_average_before': round(load_before, 2),
          'load_average_after': round(os.getloadavg()[0], 2),
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def _versions() -> dict:
  versions = {'python': platform.python_version(),
              'backend': jax.devices()[0].client.platform_version}
  for package in _PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def measure(model_config, opt_config, mesh, batch_size: int, *, warmup: int = WARMUP_STEPS,
            steps: int = 10, repeats: int = 5, peak_tflops: float | None = None,
            seed: int = 0, profile_steps: int = 0, profile_dir: str | None = None,
            squares: bool = False) -> BenchmarkResult:
  """Times the training step; see the module docstring."""
  load_before = os.getloadavg()[0]
  timer = StepTimer(model_config, opt_config, mesh, batch_size, seed=seed, squares=squares)
  timer.time(warmup)
  windows = [measure_lib.timed(lambda: timer.time(steps))[1] for _ in range(repeats)]
  profile = timer.profile(profile_steps, profile_dir) if profile_steps else None
  rates = [steps * batch_size / window.wall for window in windows]
  rate = statistics.median(rates)
  flops = flops_per_trained_image(model_config)
  device = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
  peak = peak_flops(device.device_kind, model_config.dtype, peak_tflops)
  memory = timer.compiled.memory_analysis()
  return BenchmarkResult(
      images_per_second=rate, images_per_second_min=min(rates),
      images_per_second_max=max(rates), images_per_second_windows=rates,
      images_per_cpu_second=statistics.median(steps * batch_size / w.cpu for w in windows),
      step_seconds=statistics.median(w.wall for w in windows) / steps,
      compile_seconds=timer.compile_seconds,
      warmup_steps=warmup, steps_per_window=steps, flops_per_image=flops,
      flop_convention=FLOP_CONVENTION,
      mfu=(rate * flops / (peak * mesh.size) if peak else None),
      peak_memory_bytes=(device.memory_stats() or {}).get('peak_bytes_in_use'),
      compiled_memory_bytes=memory.peak_memory_in_bytes, batch_size=batch_size,
      input=timer.input, mesh=dict(mesh.shape), model=dataclasses.asdict(model_config),
      dtype=model_config.dtype,
      device=device.device_kind, platform=device.platform, devices=mesh.size,
      processes=jax.process_count(), host=_host(load_before), versions=_versions(),
      profile=profile)


def report(result: BenchmarkResult) -> str:
  spread = f'{result.images_per_second_min:,.1f}..{result.images_per_second_max:,.1f}'
  mfu = f'{100 * result.mfu:.1f}%' if result.mfu is not None else 'n/a (unknown peak)'
  runtime = (f'{result.peak_memory_bytes / 2**30:.2f} GiB' if result.peak_memory_bytes
             else 'n/a')
  host = result.host
  lines = [
      f'device: {result.devices} x {result.device} ({result.platform}), mesh {result.mesh}, '
      f"--parallelism={result.model['parallelism']}, {result.dtype}, global batch "
      f'{result.batch_size} of {result.input}',
      f"host: {host['cpu']}, {host['cores']} cores, load average {host['load_average_before']} "
      f"before, {host['load_average_after']} after",
      f'images/s: {result.images_per_second:,.1f} (median of '
      f'{len(result.images_per_second_windows)} windows of {result.steps_per_window} steps; '
      f'spread {spread}); {result.images_per_cpu_second:,.1f} images per CPU-second of this '
      'process',
      f'step time: {1000 * result.step_seconds:.2f} ms (compile {result.compile_seconds:.1f} s, '
      f'{result.warmup_steps} warm-up steps)',
      f'MFU: {mfu} at {result.flops_per_image / 1e9:.3f} GFLOP per trained image '
      f'({result.flop_convention})',
      f'peak device memory: {runtime} (runtime, device 0); XLA estimate '
      f'{result.compiled_memory_bytes / 2**30:.2f} GiB per device',
      f'versions: {result.versions}']
  if result.profile:
    lines.append(format_profile(result.profile))
  return '\n'.join(lines)


def run(model_config, opt_config, train_config, mesh, workdir: str | None,
        options: BenchmarkConfig, squares: bool = False) -> BenchmarkResult:
  """--mode=benchmark: measure, print, and write WORKDIR/benchmark.json (if a workdir)."""
  result = measure(model_config, opt_config, mesh, train_config.batch_size,
                   steps=options.benchmark_steps, repeats=options.benchmark_repeats,
                   peak_tflops=options.peak_tflops, seed=train_config.seed,
                   profile_steps=train_config.profile_steps,
                   profile_dir=workdir and os.path.join(workdir, 'profile'), squares=squares)
  if jax.process_index() == 0:
    print(report(result))
    if workdir:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, 'benchmark.json')
      with open(path, 'w') as f:
        json.dump(dataclasses.asdict(result), f, indent=2, sort_keys=True)
      logging.info('Wrote %s', path)
  return result
