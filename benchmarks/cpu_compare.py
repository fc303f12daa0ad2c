"""Side-by-side CPU timing: alexnet_jax against PyTorch, and JAX variants against each other.

Every variant runs in its own worker process (its own XLA_FLAGS, device count and
threads), compiled and warmed up before any timing. Then the timed windows are
interleaved: round r times one window of every variant, in an order rotated each round,
so that load from other jobs falls on all variants alike. With --quiet, each window
waits until the CPUs have been idle for a second; every window also records the share
of the CPUs other jobs used during it. Per variant: the median images/s over the rounds,
its spread, its ratio to the first variant, and the CPU-seconds per image of its process
(the work done, which other jobs' load disturbs far less than the wall time).

  python benchmarks/cpu_compare.py --image_size=99 --batch_size=64 --variants=jax,torch --quiet=0.1
  python benchmarks/cpu_compare.py --variants=jax,jax_two_devices --profile_steps=2
  python benchmarks/cpu_compare.py --image_size=67 --width=0.5 --batch_size=64 \
      --variants=strategy_towers,strategy_hybrid,strategy_data,strategy_fsdp --quiet=0.1

Variants (VARIANTS below): `torch` is benchmarks/pytorch_alexnet.py; every `jax*` one is
the training step of `--mode=benchmark` (alexnet_jax.tools.benchmark.StepTimer) with XLA
flags or a CPU device count and mesh. The formulations and compiler options tried once
(and why none but one was kept) are recorded in docs/PERFORMANCE.md.
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
sys.path.insert(0, ROOT)  # alexnet_jax, when run as a script from anywhere


@dataclasses.dataclass(frozen=True)
class Variant:
  kind: str = 'jax'                 # 'jax' or 'torch'
  xla_flags: str = ''               # added to XLA_FLAGS
  mesh: tuple[int, int] = (1, 1)    # (data, tower) over that many forced CPU devices
  squares: bool = False             # R x R squares in, cropped and flipped in the step
  parallelism: str = 'towers'       # --parallelism (docs/PARALLELISM.md)


VARIANTS = {
    'jax': Variant(),  # the training step as it is
    'torch': Variant(kind='torch'),
    # Placement: the towers (or the batch halves) on two CPU devices, one per core.
    'jax_two_devices': Variant(mesh=(1, 2)),
    # Input: the store's squares, the crops and flips inside the step (device_augment.py).
    'jax_device_augment': Variant(squares=True),
    'jax_two_devices_data': Variant(mesh=(2, 1)),
    # The four --parallelism strategies on two CPU devices (strategy_towers is jax_two_devices).
    'strategy_towers': Variant(mesh=(1, 2)),
    'strategy_hybrid': Variant(mesh=(2, 1), parallelism='hybrid'),
    'strategy_data': Variant(mesh=(2, 1), parallelism='data'),
    'strategy_fsdp': Variant(mesh=(2, 1), parallelism='fsdp'),
    # XLA CPU flags.
    'jax_onednn': Variant(xla_flags='--xla_cpu_use_onednn=true'),
    'jax_no_xnnpack': Variant(xla_flags='--xla_cpu_use_xnnpack=false'),
    'jax_vector512': Variant(xla_flags='--xla_cpu_prefer_vector_width=512'),
    'jax_eigen_1thread': Variant(xla_flags='--xla_cpu_multi_thread_eigen=false'),
    'jax_xnn_graph': Variant(xla_flags='--xla_cpu_experimental_xnn_graph_fusion_mode='
                             'XNN_GRAPH_FUSION_MODE_GREEDY_SLINKY'),
    'jax_fast_math': Variant(xla_flags='--xla_cpu_enable_fast_math=true'),
}


def _worker(name: str, args) -> None:
  """Builds one variant, warms it up, then times `steps` per line read from stdin."""
  variant = VARIANTS[name]
  if variant.kind == 'torch':
    import pytorch_alexnet  # pylint: disable=import-outside-toplevel
    pytorch_alexnet.check_same_net()
    bench = pytorch_alexnet.TorchStep(_config(args), args.batch_size)
    compile_seconds, version = 0.0, (f'torch {pytorch_alexnet.torch.__version__} '
                                     f'({pytorch_alexnet.torch.get_num_threads()} threads)')
  else:
    import jax  # pylint: disable=import-outside-toplevel
    # pylint: disable-next=import-outside-toplevel
    from alexnet_jax import config as config_lib, parallel
    from alexnet_jax.tools import benchmark  # pylint: disable=import-outside-toplevel
    devices = variant.mesh[0] * variant.mesh[1]
    jax.config.update('jax_num_cpu_devices', devices)
    mesh = parallel.make_mesh(config_lib.MeshShape(*variant.mesh), jax.devices()[:devices])
    bench = benchmark.StepTimer(_config(args, variant.parallelism), config_lib.OptimizerConfig(),
                                mesh, args.batch_size, squares=variant.squares)
    compile_seconds, version = bench.compile_seconds, f'jax {jax.__version__}'
  bench.time(args.warmup)
  print(f'ready {compile_seconds:.1f} {version}', flush=True)
  for line in sys.stdin:
    command, steps, *directory = line.split()
    if command == 'profile':  # JAX only: the op breakdown, as JSON in the directory
      profile = bench.profile(int(steps), directory[0])
      with open(os.path.join(directory[0], 'breakdown.json'), 'w') as f:
        json.dump(profile, f, indent=2)
      print('done', flush=True)
    else:
      cpu = time.process_time()
      wall = bench.time(int(steps))
      print(f'{wall:.6f} {time.process_time() - cpu:.6f}', flush=True)


def _config(args, parallelism='towers'):
  from alexnet_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.ModelConfig(towers=args.towers, num_classes=args.num_classes,
                                  image_size=args.image_size, width=args.width,
                                  parallelism=parallelism)
  config.validate()
  return config


def _start(name: str, argv: list[str]) -> subprocess.Popen:
  variant = VARIANTS[name]
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join(filter(None, [env.get('XLA_FLAGS', ''), variant.xla_flags]))
  return subprocess.Popen([sys.executable, os.path.abspath(__file__), f'--worker={name}', *argv],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)


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
  parser.add_argument('--profile_steps', type=int, default=0,
                      help='after the rounds, trace this many steps of every JAX variant '
                           'and print where the time goes')
  parser.add_argument('--profile_dir', default='/tmp/cpu_compare_profile')
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
  # pylint: disable-next=import-outside-toplevel
  from alexnet_jax.tools import benchmark, measure
  load_before = os.getloadavg()
  workers, compile_seconds, versions = {}, {}, set()
  try:
    for name in names:  # one at a time: compilation is not timed, but it loads the CPU
      workers[name] = _start(name, model_args)
      _, seconds, version = _read(workers[name], name).split(maxsplit=2)
      compile_seconds[name] = float(seconds)
      versions.add(version)
    seconds, cpu_seconds, others = ({name: [] for name in names} for _ in range(3))
    for round_ in range(args.rounds):
      for name in names[round_ % len(names):] + names[:round_ % len(names)]:
        if args.quiet:
          measure.wait_until_quiet(args.quiet, args.max_wait)
        busy = measure.busy_cpu_seconds()
        workers[name].stdin.write(f'time {args.steps}\n')
        workers[name].stdin.flush()
        wall, cpu = map(float, _read(workers[name], name).split())
        seconds[name].append(wall)
        cpu_seconds[name].append(cpu)
        if wall >= 0.5:  # /proc/stat counts in 10 ms ticks
          # The share of the machine that other jobs used during this window.
          others[name].append(max(0.0, (measure.busy_cpu_seconds() - busy - cpu) /
                                  (wall * os.cpu_count())))
    profiles = {}
    for name in names if args.profile_steps else ():
      if VARIANTS[name].kind == 'jax':
        directory = os.path.join(args.profile_dir, name)
        workers[name].stdin.write(f'profile {args.profile_steps} {directory}\n')
        workers[name].stdin.flush()
        _read(workers[name], name)
        with open(os.path.join(directory, 'breakdown.json')) as f:
          profiles[name] = json.load(f)
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
  host = measure.cpu_model()
  print(f"{host}, {os.cpu_count()} cores; {', '.join(sorted(versions))}")
  print(f'{args.image_size}x{args.image_size}, batch {args.batch_size}, width {args.width}, '
        f'{args.towers} towers, float32; {args.rounds} interleaved windows of {args.steps} '
        f'steps; load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after')
  for name in names:
    print(f'  {name:<28} {medians[name]:8.1f} img/s  (windows {min(rates[name]):.1f}..'
          f'{max(rates[name]):.1f})  x{medians[name] / medians[base]:.2f} vs {base};  '
          f'{1000 * cpu_per_image[name]:.1f} CPU-ms/image ({1 / cpu_per_image[name]:,.0f} '
          'images per CPU-second)'
          + (f'; other jobs used {statistics.median(others[name]):.0%} of the CPUs (median '
             'window)' if others[name] else ''))
  if profiles:
    for name, profile in profiles.items():
      print(f'\n{name}: {benchmark.format_profile(profile)}')
  if args.output:
    with open(args.output, 'w') as f:
      json.dump({'args': vars(args), 'cpu': host, 'versions': sorted(versions),
                 'load_before': load_before, 'load_after': load_after,
                 'others_cpu_share': others,
                 'compile_seconds': compile_seconds, 'images_per_second': rates,
                 'median': medians, 'window_cpu_seconds': cpu_seconds,
                 'cpu_seconds_per_image': cpu_per_image, 'profiles': profiles,
                 'variants': {n: dataclasses.asdict(VARIANTS[n]) for n in names}}, f, indent=2)


if __name__ == '__main__':
  main()
