"""Side-by-side CPU timing: alexnet_jax against PyTorch, and JAX variants against each other.

Every variant runs in its own worker process (so each has its own XLA_FLAGS, device
count and threads), compiled and warmed up before any timing. Then the timed windows
are interleaved: round r times one window of every variant, in an order rotated each
round, so that load from other jobs on the machine falls on all variants alike. Each
variant's median images/s over the rounds is reported with its spread and its ratio to
the first variant, along with the load average before and after.

  python benchmarks/cpu_compare.py --image_size=99 --batch_size=64 --variants=jax,torch
  python benchmarks/cpu_compare.py --variants=jax,jax_onednn,jax_two_devices --rounds=7

Variants (VARIANTS below): `torch` is benchmarks/pytorch_alexnet.py; every `jax*` one is
the training step of `--mode=benchmark` (alexnet_jax.benchmark.StepTimer) with XLA flags,
a CPU device count and mesh, or an alternative formulation from cpu_variants.py patched in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Variant:
  kind: str = 'jax'                 # 'jax' or 'torch'
  xla_flags: str = ''
  mesh: tuple[int, int] = (1, 1)    # (data, tower) over that many forced CPU devices
  patches: tuple[str, ...] = ()     # names in cpu_variants.PATCHES


VARIANTS = {
    'jax': Variant(),
    'torch': Variant(kind='torch'),
    'jax_onednn': Variant(xla_flags='--xla_cpu_use_onednn=true'),
    'jax_no_xnnpack': Variant(xla_flags='--xla_cpu_use_xnnpack=false'),
    'jax_vector512': Variant(xla_flags='--xla_cpu_prefer_vector_width=512'),
    'jax_fast_math': Variant(xla_flags='--xla_cpu_enable_fast_math=true'),
    'jax_eigen_1thread': Variant(xla_flags='--xla_cpu_multi_thread_eigen=false'),
    'jax_two_devices': Variant(mesh=(1, 2)),
    'jax_two_devices_data': Variant(mesh=(2, 1)),
    'jax_lrn_shifts': Variant(patches=('lrn_shifts',)),
    'jax_lrn_banded': Variant(patches=('lrn_banded',)),
    'jax_pool_slices': Variant(patches=('pool_slices',)),
    'jax_s2d': Variant(patches=('s2d',)),
    'jax_all': Variant(patches=('s2d', 'lrn_shifts', 'pool_slices')),
}


def _worker(name: str, args) -> None:
  """Builds one variant, warms it up, then times `steps` per line read from stdin."""
  variant = VARIANTS[name]
  if variant.kind == 'torch':
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import pytorch_alexnet  # pylint: disable=import-outside-toplevel
    bench = pytorch_alexnet.TorchStep(_config(args), args.batch_size)
    compile_seconds = 0.0
  else:
    import jax  # pylint: disable=import-outside-toplevel
    from alexnet_jax import benchmark, optimizer, parallel  # pylint: disable=import-outside-toplevel
    import cpu_variants  # pylint: disable=import-outside-toplevel
    cpu_variants.apply(variant.patches)
    devices = variant.mesh[0] * variant.mesh[1]
    jax.config.update('jax_num_cpu_devices', devices)
    mesh = parallel.make_mesh(parallel.MeshShape(*variant.mesh), jax.devices()[:devices])
    bench = benchmark.StepTimer(_config(args), optimizer.OptimizerConfig(), mesh,
                                args.batch_size)
    compile_seconds = bench.compile_seconds
  bench.time(args.warmup)
  print(f'ready {compile_seconds:.1f}', flush=True)
  for line in sys.stdin:
    cpu = time.process_time()
    wall = bench.time(int(line))
    print(f'{wall:.6f} {time.process_time() - cpu:.6f}', flush=True)


def _config(args):
  from alexnet_jax import model  # pylint: disable=import-outside-toplevel
  config = model.ModelConfig(towers=args.towers, num_classes=args.num_classes,
                             image_size=args.image_size, width=args.width)
  config.validate()
  return config


def _start(name: str, argv: list[str]) -> subprocess.Popen:
  variant = VARIANTS[name]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.dirname(__file__)]),
             TF_CPP_MIN_LOG_LEVEL='2')
  env['XLA_FLAGS'] = ' '.join(filter(None, [env.get('XLA_FLAGS', ''), variant.xla_flags]))
  return subprocess.Popen([sys.executable, os.path.abspath(__file__), f'--worker={name}', *argv],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)


def _busy_cpu_seconds() -> float:
  """CPU-seconds every process on the machine has spent busy since boot (/proc/stat)."""
  with open('/proc/stat') as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  return (sum(fields) - fields[3] - fields[4]) / os.sysconf('SC_CLK_TCK')  # less idle, iowait


def _wait_until_quiet(threshold: float, max_wait: float) -> None:
  """Waits (at most max_wait s) until the CPUs are less busy than `threshold` for 1 s."""
  deadline = time.monotonic() + max_wait
  while time.monotonic() < deadline:
    before = _busy_cpu_seconds()
    time.sleep(1)
    if (_busy_cpu_seconds() - before) / os.cpu_count() <= threshold:
      return


def _read(process: subprocess.Popen, name: str) -> str:
  line = process.stdout.readline()
  if not line:
    raise RuntimeError(f'worker {name} exited with {process.wait()}')
  return line.strip()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', default='jax,torch',
                      help=f'comma-separated, the first is the baseline; of {sorted(VARIANTS)}')
  parser.add_argument('--image_size', type=int, default=99)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--towers', type=int, default=2)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--steps', type=int, default=3, help='steps per timed window')
  parser.add_argument('--rounds', type=int, default=5, help='timed windows per variant')
  parser.add_argument('--quiet', type=float, default=0.0,
                      help='before each window, wait until the CPUs are less busy than this '
                           'fraction (0.1: idle), at most --max_wait seconds; 0: never')
  parser.add_argument('--max_wait', type=float, default=120)
  parser.add_argument('--output', help='write the results here as JSON')
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    _worker(args.worker, args)
    return
  model_args = [f'--{k}={getattr(args, k)}' for k in ('image_size', 'batch_size', 'width',
                                                        'towers', 'num_classes', 'warmup')]
  names = args.variants.split(',')
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    parser.error(f'unknown variants {unknown}; known: {sorted(VARIANTS)}')
  load_before = os.getloadavg()
  workers, compile_seconds = {}, {}
  try:
    for name in names:  # one at a time: compilation is not timed, but it loads the CPU
      workers[name] = _start(name, model_args)
      compile_seconds[name] = float(_read(workers[name], name).split()[1])
    seconds, cpu_seconds, others = ({name: [] for name in names} for _ in range(3))
    for round_ in range(args.rounds):
      for name in names[round_ % len(names):] + names[:round_ % len(names)]:
        if args.quiet:
          _wait_until_quiet(args.quiet, args.max_wait)
        busy = _busy_cpu_seconds()
        workers[name].stdin.write(f'{args.steps}\n')
        workers[name].stdin.flush()
        wall, cpu = map(float, _read(workers[name], name).split())
        seconds[name].append(wall)
        cpu_seconds[name].append(cpu)
        # The share of the machine that other jobs used during this window.
        others[name].append(max(0.0, (_busy_cpu_seconds() - busy - cpu) /
                                (wall * os.cpu_count())))
  finally:
    for process in workers.values():
      process.stdin.close()
      process.wait()
  load_after = os.getloadavg()
  rates = {name: [args.steps * args.batch_size / s for s in seconds[name]] for name in names}
  medians = {name: statistics.median(r) for name, r in rates.items()}
  # CPU-seconds per image: the work a variant does, less sensitive to other jobs' load.
  cpu_per_image = {name: statistics.median(cpu_seconds[name]) / (args.steps * args.batch_size)
                   for name in names}
  base = names[0]
  print(f'{args.image_size}x{args.image_size}, batch {args.batch_size}, width {args.width}, '
        f'{args.towers} towers, float32; {args.rounds} interleaved windows of {args.steps} '
        f'steps; load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after')
  for name in names:
    print(f'  {name:<28} {medians[name]:8.1f} img/s  (windows {min(rates[name]):.1f}..'
          f'{max(rates[name]):.1f})  x{medians[name] / medians[base]:.2f} vs {base};  '
          f'{1000 * cpu_per_image[name]:.1f} CPU-ms/image; other jobs used '
          f'{statistics.median(others[name]):.0%} of the CPUs (median window)')
  if args.output:
    with open(args.output, 'w') as f:
      json.dump({'args': vars(args), 'load_before': load_before, 'load_after': load_after,
                 'others_cpu_share': others,
                 'compile_seconds': compile_seconds, 'images_per_second': rates,
                 'median': medians, 'window_cpu_seconds': cpu_seconds,
                 'cpu_seconds_per_image': cpu_per_image,
                 'variants': {n: dataclasses.asdict(VARIANTS[n]) for n in names}}, f, indent=2)


if __name__ == '__main__':
  main()
