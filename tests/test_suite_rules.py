"""Rules the test suite keeps about itself."""

import ast
import glob
import os

from tests import cli


def _decorators(function: ast.FunctionDef) -> set[str]:
  return {ast.unparse(d) for d in function.decorator_list}


def _reads_stderr(function: ast.FunctionDef) -> bool:
  """Whether the test asserts what a process wrote on stderr (not just shows it on failure)."""
  for node in ast.walk(function):
    if isinstance(node, ast.Assert):
      checked = node.test  # not its message, which only shows stderr on failure
    elif isinstance(node, ast.Assign):
      checked = node.value  # e.g. [line] = cli.problems(result.stderr): exactly one line
    else:
      continue
    if any(isinstance(inner, ast.Attribute) and inner.attr == 'stderr'
           or isinstance(inner, ast.Name) and inner.id == 'stderr'
           for inner in ast.walk(checked)):
      return True
  return False


def test_every_test_that_asserts_what_a_process_printed_on_stderr_is_marked():
  """CI runs the tests marked `stderr` again with TF_ENABLE_ONEDNN_OPTS=1: what TensorFlow
  prints on AVX-512 CPUs, shown on any x86 CPU (pytest.ini)."""
  unmarked = []
  for path in sorted(glob.glob(os.path.join(cli.ROOT, 'tests', 'test_*.py'))):
    with open(path) as f:
      tree = ast.parse(f.read())
    module_marks = {ast.unparse(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and any(getattr(t, 'id', '') == 'pytestmark' for t in node.targets)}
    for node in tree.body:
      if (isinstance(node, ast.FunctionDef) and node.name.startswith('test_')
          and _reads_stderr(node) and 'pytest.mark.stderr' not in _decorators(node)
          and not any('pytest.mark.stderr' in mark for mark in module_marks)):
        unmarked.append(f'{os.path.basename(path)}::{node.name}')
  assert not unmarked, unmarked
