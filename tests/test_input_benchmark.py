"""--mode=benchmark --benchmark=input, and the command lines data/ had before it moved."""

import re
import subprocess
import sys

import pytest

from alexnet_jax import config as config_lib
from alexnet_jax.tools import input_benchmark
from tests import cli
from tests import meshes
from tests.conftest_data import IMAGE_SIZE


def test_it_prints_each_inputs_rate_per_cpu_second_and_the_jpeg_ceiling(demo):
  options = config_lib.BenchmarkConfig(benchmark='input', benchmark_stores=('none', 'jpeg', 'raw'),
                                       benchmark_seconds=0.2, benchmark_repeats=2)
  lines = input_benchmark.run(demo.config(image_size=IMAGE_SIZE), options, 8,
                              meshes.mesh(1, 1)).splitlines()
  results = [line for line in lines if line.startswith('store=')]
  assert [line.split()[0] for line in results] == ['store=none', 'store=jpeg', 'store=raw']
  for line in results:
    assert re.fullmatch(r'.*: runs \d+, \d+ images/s; .*; [1-9]\d* images per CPU-second of '
                        r'this process\.', line), line
  ceiling = lines[lines.index(results[1]) + 1]  # measured after each of the 2 JPEG runs
  assert re.fullmatch(r'  its ceiling: .*: [1-9]\d* images per CPU-second; the reader reached '
                      r'\d+%, \d+% of it\.', ceiling), ceiling


def test_a_bad_store_is_refused_by_the_config_before_anything_is_written():
  with pytest.raises(config_lib.UserError) as error:
    config_lib.BenchmarkConfig(benchmark_stores=('none', 'jpg')).validate()
  assert str(error.value) == ("--benchmark_stores must name stores among jpeg, raw, none, got "
                              "'none,jpg'.")


@pytest.mark.slow
@pytest.mark.stderr
@pytest.mark.parametrize('module, new_form', [
    ('alexnet_jax.data.input_pipeline', '--mode=benchmark --benchmark=input'),
    ('alexnet_jax.data.square_store', '--mode=prepare'),
    ('alexnet_jax.data.demo_data', '--mode=prepare --demo_data'),
])
def test_an_old_command_line_names_its_new_form_in_one_line(module, new_form):
  result = subprocess.run([sys.executable, '-m', module, '--benchmark'], cwd=cli.ROOT,
                          env=cli.environment(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  [line] = result.stderr.splitlines()
  assert f'python -m alexnet_jax.main {new_form}' in line, line
