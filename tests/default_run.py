"""Three training steps of the default strategy, as recorded from the code before it had others.

`python -m tests.default_run` wrote tests/default_run.json at commit 158ce00 (before
--parallelism existed), with the XLA flags the tests run under (tests/conftest.py).
tests/test_strategies.py runs the same steps with the code as it is and compares: the
lowered program must be the same text (the same computation, bit for bit, on any machine)
and the losses and parameters the same numbers.
"""

import os

if __name__ == '__main__':  # the tests' XLA flags (tests/conftest.py), before jax starts
  os.environ['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=8'
                             ' --xla_backend_optimization_level=0')

import hashlib
import json

import jax
import numpy as np

from alexnet_jax import config as config_lib
from alexnet_jax import preprocess
from alexnet_jax import synthetic_data
from alexnet_jax import train
from alexnet_jax.tools import measure
from tests import meshes

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default_run.json')
MESHES = ((1, 1), (1, 2), (2, 2))
STEPS = 3


def run(shape) -> dict:
  """The losses of STEPS steps of TINY (standardized input) on a mesh, and digests of its
  parameters and program."""
  mesh = meshes.mesh(*shape)
  opt_config = config_lib.OptimizerConfig()
  step = train.make_train_step(meshes.TINY, opt_config, mesh, batch_size=meshes.BATCH,
                               total_steps=10, pca_std=0.1, seed=3,
                               normalizer=preprocess.Normalizer(preprocess.CHANNEL_MEAN,
                                                                   preprocess.CHANNEL_STD))
  batches = synthetic_data.synthetic_batches(meshes.BATCH, meshes.TINY.image_size,
                                             meshes.TINY.num_classes, mesh, seed=1)
  losses = []
  with jax.set_mesh(mesh):
    state = train.init_state(meshes.TINY, opt_config, mesh, jax.random.key(0))
    program = step.lower(state, next(batches)).as_text()
    for _ in range(STEPS):
      state, metrics = step(state, next(batches))
      losses.append(float(metrics['loss']).hex())
  params = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(state.params)):
    params.update(np.ascontiguousarray(leaf).tobytes())
  return {'losses': losses, 'params_sha256': params.hexdigest(),
          'program_sha256': hashlib.sha256(program.encode()).hexdigest()}


def cpu() -> str:
  """The CPU's model and a digest of its feature flags (XLA compiles for both)."""
  flags = ''
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      flags = next((line for line in f if line.startswith('flags')), '')
  return f'{measure.cpu_model()}; flags sha256 {hashlib.sha256(flags.encode()).hexdigest()[:16]}'


def main() -> None:
  record = {'jax': jax.__version__, 'cpu': cpu(),
            'runs': {f'{data},{tower}': run((data, tower)) for data, tower in MESHES}}
  with open(RECORD, 'w') as f:
    json.dump(record, f, indent=2)
  print(f'Wrote {RECORD}')


if __name__ == '__main__':
  main()
