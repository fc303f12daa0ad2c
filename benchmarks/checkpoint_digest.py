"""What a checkpoint's digests cost next to the save itself (alexnet_jax/integrity.py).

Builds the train state of a configuration (the paper's net by default) on one device,
then times, interleaved over --repeats rounds: the digests of the whole state (one jitted
pass, compiled before timing), the blocking part of Checkpoints.save (what the training
loop waits for: the digests again, then orbax's copy), and the whole save through to its
commit on disk. Reports medians of wall and CPU-seconds of this process (all its threads).

  python benchmarks/checkpoint_digest.py [--width=1.0 --image_size=227 --repeats=5]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # alexnet_jax, when run as a script from anywhere

import jax  # pylint: disable=g-import-not-at-top

from alexnet_jax import checkpoints  # pylint: disable=g-import-not-at-top
from alexnet_jax import config as config_lib
from alexnet_jax import integrity
from alexnet_jax import parallel
from alexnet_jax import train


def _timed(fn) -> tuple[float, float]:
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--image_size', type=int, default=227)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  config = config_lib.ModelConfig(width=args.width, image_size=args.image_size)
  config.validate()
  mesh = parallel.make_mesh(config_lib.MeshShape(1, 1), jax.devices()[:1])
  state = jax.block_until_ready(
      train.init_state(config, config_lib.OptimizerConfig(), mesh, jax.random.key(0)))
  size = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  integrity.digests(state)  # compiled before timing
  with tempfile.TemporaryDirectory() as workdir:
    store = checkpoints.Checkpoints(workdir, dataclasses.asdict(config), keep=1)
    times = {'digests': [], 'save, blocking': [], 'save, to commit': []}
    for step in range(args.repeats + 1):  # the first round warms orbax up
      digest = _timed(lambda: integrity.digests(state))
      blocking = _timed(lambda s=step: store.save(s, state))  # digests included
      rest = _timed(store.wait)
      if step:
        times['digests'].append(digest)
        times['save, blocking'].append(blocking)
        times['save, to commit'].append((blocking[0] + rest[0], blocking[1] + rest[1]))
    store.close()
  print(f'{config.width=} {config.image_size=}: train state of {size / 2**20:,.0f} MiB, '
        f'{args.repeats} rounds on {len(os.sched_getaffinity(0))} cores '
        f'({jax.devices()[0].device_kind})')
  digest_cpu = statistics.median(c for _, c in times['digests'])
  for name, samples in times.items():
    wall = statistics.median(w for w, _ in samples)
    cpu = statistics.median(c for _, c in samples)
    print(f'  {name:16s} median {wall * 1000:8.1f} ms wall, {cpu * 1000:8.1f} ms CPU '
          f'(digests / this, CPU: {digest_cpu / cpu:.2f})')


if __name__ == '__main__':
  main()
