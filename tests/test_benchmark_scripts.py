"""Every script in benchmarks/ runs, at a tiny size, so a refactor cannot break one unseen."""

import ast
import glob
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest

from tests import cli

BENCHMARKS = os.path.join(cli.ROOT, 'benchmarks')
TINY = ['--image_size=67', '--width=0.125']


def _is_module(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:
    return False


def _own_nodes(scope: ast.AST):
  """The nodes of a module or function, not those of the functions inside it."""
  for child in ast.iter_child_nodes(scope):
    yield child
    if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      yield from _own_nodes(child)


def _missing_attributes(scope: ast.AST, inherited: dict[str, str]):
  """(line, 'module.attribute') read in scope through a name bound to a package module."""
  aliases, rebound = dict(inherited), set()
  if not isinstance(scope, ast.Module):
    rebound |= {a.arg for a in ast.walk(scope.args) if isinstance(a, ast.arg)}
  for node in _own_nodes(scope):
    if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('alexnet_jax'):
      for name in node.names:
        if _is_module(f'{node.module}.{name.name}'):
          aliases[name.asname or name.name] = f'{node.module}.{name.name}'
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
      rebound.add(node.id)
  aliases = {name: module for name, module in aliases.items() if name not in rebound}
  for node in _own_nodes(scope):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      yield from _missing_attributes(node, aliases)
    elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases
          and not hasattr(importlib.import_module(aliases[node.value.id]), node.attr)):
      yield node.lineno, f'{aliases[node.value.id]}.{node.attr}'


def _sources():
  package = glob.glob(os.path.join(cli.ROOT, 'alexnet_jax', '**', '*.py'), recursive=True)
  return sorted(package + glob.glob(os.path.join(BENCHMARKS, '*.py')))


def test_every_attribute_read_from_a_package_module_exists():
  """`model_lib.PAPER_CROSSINGS` after PAPER_CROSSINGS moved to config: caught without running
  the script (the PyTorch benchmark needs torch, which not every machine has)."""
  missing = []
  for path in _sources():
    with open(path) as f:
      tree = ast.parse(f.read())
    missing += [f'{os.path.relpath(path, cli.ROOT)}:{line}: {name}'
                for line, name in _missing_attributes(tree, {})]
  assert not missing, missing


def _run(script, *args):
  return subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args],
                        cwd=cli.ROOT, env=cli.environment(), capture_output=True, text=True,
                        timeout=300)


@pytest.mark.slow
@pytest.mark.stderr
def test_the_checkpoint_digest_benchmark_runs():
  result = _run('checkpoint_digest.py', *TINY, '--repeats=1')
  assert result.returncode == 0, result.stderr
  assert not cli.problems(result.stderr), result.stderr
  assert 'digests' in result.stdout and 'save, to commit' in result.stdout


@pytest.mark.slow
@pytest.mark.stderr
def test_the_cpu_comparison_runs_its_jax_variants_side_by_side():
  result = _run('cpu_compare.py', '--variants=jax,jax_two_devices,strategy_fsdp', *TINY,
                '--batch_size=4', '--warmup=1', '--steps=1', '--rounds=1')
  assert result.returncode == 0, result.stderr
  assert 'jax_two_devices' in result.stdout and 'x1.00 vs jax' in result.stdout
  assert 'strategy_fsdp' in result.stdout and 'images per CPU-second' in result.stdout
  assert not cli.problems(result.stderr), result.stderr


@pytest.mark.slow
@pytest.mark.stderr
def test_the_cpu_comparison_runs_against_pytorch_and_prints_only_its_table():
  pytest.importorskip('torch', reason='the PyTorch comparison needs torch (CI installs it)')
  result = _run('cpu_compare.py', '--variants=jax,torch', *TINY, '--batch_size=4',
                '--warmup=1', '--steps=1', '--rounds=1')
  assert result.returncode == 0, result.stderr
  assert ' torch ' in result.stdout and 'CPU-ms/image' in result.stdout
  assert not cli.problems(result.stderr), result.stderr  # e.g. a float64 warning from a check
  alone = _run('pytorch_alexnet.py', *TINY, '--batch_size=4', '--warmup=1', '--steps=1',
               '--repeats=1')
  assert alone.returncode == 0, alone.stderr
  assert 'images/s' in alone.stdout
