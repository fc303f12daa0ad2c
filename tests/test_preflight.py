"""Pre-flight: bytes per device against their formulas, and the one line when they do not fit."""

import math

import jax
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import model
from alexnet_jax import parallel
from alexnet_jax import preflight
from tests import meshes

CONFIG = meshes.TINY


def _parameter_bytes(tower_devices):
  """Every parameter has a leading tower axis but fc8's bias, which every device holds."""
  params = meshes.host_params(CONFIG)
  total = model.count_params(params)
  fc8_bias = params['fc8']['bias'].size
  return 4 * ((total - fc8_bias) // tower_devices + fc8_bias)


def _kept(spec):
  if not spec.is_conv:
    return spec.features
  conv = spec.conv_size ** 2 * spec.features
  return conv * (2 if spec.lrn else 1) + (spec.out_size ** 2 * spec.features if spec.pool else 0)


@pytest.mark.parametrize('shape', [(1, 1), (1, 2), (2, 2)])
def test_a_training_step_needs_parameters_three_times_plus_the_kept_activations(shape):
  mesh = meshes.mesh(*shape)
  needed = preflight.footprint(CONFIG, config_lib.OptimizerConfig(), mesh, global_batch=8,
                               training=True)
  parameters = _parameter_bytes(shape[1])
  assert needed.parameters == needed.gradients == parameters
  assert needed.optimizer == parameters + 4 + 4  # momentum, the step count and the rate
  towers_here = CONFIG.towers // shape[1]
  kept = sum(_kept(spec) for spec in model.layer_specs(CONFIG))
  assert needed.activations == (8 // shape[0]) * (towers_here * kept * 4 + 67 * 67 * 3 * 4)
  assert needed.total == 3 * parameters + 8 + needed.activations


def test_an_evaluation_needs_the_parameters_and_the_largest_layer_at_once():
  mesh = meshes.mesh(1, 1)
  needed = preflight.footprint(CONFIG, config_lib.OptimizerConfig(), mesh, global_batch=4,
                               training=False, crops=10)
  conv1 = model.layer_specs(CONFIG)[0]
  # conv1 reads the 67x67 image and writes its full-size output, for both towers.
  peak = 67 * 67 * 3 + 2 * conv1.conv_size ** 2 * conv1.features
  assert (needed.parameters, needed.optimizer, needed.gradients) == (_parameter_bytes(1), 0, 0)
  assert needed.activations == 40 * peak * 4


def test_a_configuration_that_cannot_fit_is_refused_with_its_numbers(monkeypatch):
  mesh = meshes.mesh(1, 1)
  monkeypatch.setattr(preflight, 'device_memory', lambda device: (10 * 2**20, 'of test memory'))
  needed = preflight.check(CONFIG, config_lib.OptimizerConfig(), mesh, 8, training=True)
  assert needed.total < 10 * 2**20
  huge = config_lib.ModelConfig(image_size=10000)
  with pytest.raises(preflight.DoesNotFitError) as error:
    preflight.check(huge, config_lib.OptimizerConfig(), mesh, 128, training=True)
  parameters = model.count_params(parallel.abstract_params(huge)) * 4 / 2**30
  assert ('needs at least' in str(error.value) and f'parameters {parameters:,.1f} GiB'
          in str(error.value) and 'a device has 10.0 MiB of test memory' in str(error.value))


def test_the_cpu_counts_available_ram_shared_by_its_devices():
  memory, what = preflight.device_memory(jax.devices('cpu')[0])
  devices = jax.local_device_count()
  with open('/proc/meminfo') as f:
    available = next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable'))
  assert math.isclose(memory * devices, available, rel_tol=0.05)
  assert what.startswith('of available RAM') and f'shared by {devices} CPU devices' in what
