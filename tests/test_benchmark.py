"""--mode=benchmark: the JSON it writes, on several meshes, and that it needs no TensorFlow.

Speed itself is never asserted: these check that the numbers are well-formed.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from alexnet_jax.tools import benchmark
from alexnet_jax import config as config_lib
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
  assert benchmark.flops_per_trained_image(config_lib.ModelConfig()) == 6 * PAPER_MACS
  assert benchmark.flops_per_trained_image(meshes.TINY) == 6 * TINY_MACS


@pytest.mark.slow
@pytest.mark.parametrize('shape, profile_steps', [((1, 1), 1), ((2, 2), 0)])
def test_benchmark_writes_sane_json(tmp_path, shape, profile_steps):
  mesh = meshes.mesh(*shape)
  train_config = config_lib.TrainConfig(batch_size=meshes.BATCH, profile_steps=profile_steps)
  benchmark.run(meshes.TINY, config_lib.OptimizerConfig(), train_config, mesh, str(tmp_path),
                config_lib.BenchmarkConfig(benchmark_steps=1, benchmark_repeats=2,
                                           peak_tflops=1.0))
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


@pytest.mark.slow
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
