"""--mode=benchmark: the JSON it writes, on several meshes, and that it needs no TensorFlow.

Speed itself is never asserted: these check that the numbers are well-formed.
"""

import json
import os
import subprocess
import sys

import jax
from jax import lax
import numpy as np
import pytest

from alexnet_jax import benchmark
from alexnet_jax import model as model_lib
from alexnet_jax import optimizer
from alexnet_jax import train
from tests import meshes
from tests.cli import ROOT

# Multiply-adds per image of meshes.TINY (67x67 input, width 0.125: 6, 16, 24, 24, 16,
# 256, 256 channels per tower, 10 classes), layer by layer from the paper's geometry:
# conv1 15x15 outputs, pools 15 -> 7 -> 3 -> 1; conv3, fc6, fc7, fc8 read both towers.
TINY_MACS = (15 * 15 * 6 * 11 * 11 * 3 * 2     # conv1
             + 7 * 7 * 16 * 5 * 5 * 6 * 2      # conv2
             + 3 * 3 * 24 * 3 * 3 * 32 * 2     # conv3
             + 3 * 3 * 24 * 3 * 3 * 24 * 2     # conv4
             + 3 * 3 * 16 * 3 * 3 * 24 * 2     # conv5
             + 32 * 256 * 2 + 512 * 256 * 2    # fc6, fc7
             + 512 * 10)                       # fc8
PAPER_MACS = 724_406_816  # ALEXNET.md


def test_flops_follow_the_stated_convention():
  assert benchmark.flops_per_trained_image(model_lib.ModelConfig()) == 6 * PAPER_MACS
  assert benchmark.flops_per_trained_image(meshes.TINY) == 6 * TINY_MACS


@pytest.mark.parametrize('shape, profile_steps', [((1, 1), 1), ((2, 2), 0)])
def test_benchmark_writes_sane_json(tmp_path, shape, profile_steps):
  mesh = meshes.mesh(*shape)
  train_config = train.TrainConfig(batch_size=meshes.BATCH, profile_steps=profile_steps)
  benchmark.run(meshes.TINY, optimizer.OptimizerConfig(), train_config, mesh, str(tmp_path),
                steps=1, repeats=2, peak_tflops=1.0)
  with open(tmp_path / 'benchmark.json') as f:
    result = json.load(f)
  rates = result['images_per_second_windows']
  assert len(rates) == 2 and all(rate > 0 for rate in rates)
  assert (result['images_per_second_min'] <= result['images_per_second']
          <= result['images_per_second_max'])
  assert result['step_seconds'] > 0 and result['compile_seconds'] > 0
  assert result['flops_per_image'] == 6 * TINY_MACS
  devices = shape[0] * shape[1]
  assert result['mfu'] == pytest.approx(result['images_per_second'] * 6 * TINY_MACS
                                        / (1e12 * devices))
  assert result['mesh'] == {'data': shape[0], 'tower': shape[1]}
  assert result['devices'] == devices and result['batch_size'] == meshes.BATCH
  assert result['platform'] == 'cpu' and result['compiled_memory_bytes'] > 0
  assert result['versions']['jax'] == jax.__version__
  assert result['host']['cores'] >= 1
  if profile_steps:
    profile = result['profile']
    categories = {row['category'] for row in profile['categories']}
    assert {'convolution', 'matmul'} <= categories
    assert sum(row['share'] for row in profile['categories']) == pytest.approx(1, abs=1e-3)
    assert any(row['part'] == 'backward conv1' for row in profile['parts'])
  else:
    assert result['profile'] is None


def test_benchmark_mode_needs_no_tensorflow(tmp_path):
  # An import of TensorFlow (or TFDS) anywhere on the way raises ImportError.
  code = ("import runpy, sys\n"
          "sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None\n"
          "runpy.run_module('alexnet_jax.main', run_name='__main__')\n")
  args = ['--mode=benchmark', f'--workdir={tmp_path}', '--width=0.125', '--image_size=67',
          '--num_classes=10', '--batch_size=8', '--benchmark_steps=1', '--benchmark_repeats=1']
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_backend_optimization_level=0')
  result = subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert 'images/s' in result.stdout
  assert os.path.exists(tmp_path / 'benchmark.json')


def test_the_formulations_timed_against_the_model_compute_the_same():
  from benchmarks import cpu_variants  # pylint: disable=import-outside-toplevel
  key = jax.random.key(0)
  activations = jax.nn.relu(30 * jax.random.normal(key, (2, 11, 11, 48)))
  want = model_lib.local_response_norm(activations)
  for lrn in (cpu_variants.lrn_shifts, cpu_variants.lrn_banded):
    np.testing.assert_allclose(lrn(activations), want, rtol=1e-6)
  np.testing.assert_array_equal(cpu_variants.pool_slices(activations, meshes.TINY),
                                model_lib.max_pool(activations, meshes.TINY))
  kernel = jax.random.normal(key, (11, 11, 3, 8))
  numbers = ('NHWC', 'HWIO', 'NHWC')
  for size, pad in ((99, 0), (224, 3)):  # 224: cuda-convnet's (0, 3) padding
    images = jax.random.normal(key, (2, size, size, 3))
    args = ((4, 4), ((0, pad), (0, pad)))
    want = lax.conv_general_dilated(images, kernel, *args, dimension_numbers=numbers)
    for conv in (cpu_variants.space_to_depth_conv, cpu_variants.nchw_conv):
      np.testing.assert_allclose(conv(images, kernel, *args, dimension_numbers=numbers), want,
                                 rtol=1e-4, atol=1e-4)
  fc7 = model_lib.layer_specs(meshes.TINY)[6]
  inputs = [jax.random.normal(key, (4, fc7.in_features))] * 2
  layer = model_lib.TowerLayer(fc7, meshes.TINY, 2)
  params = layer.init(key, inputs)
  for got, want in zip(cpu_variants._BatchedTowerLayer(fc7, meshes.TINY, 2).apply(params, inputs),
                       layer.apply(params, inputs)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

