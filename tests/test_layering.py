"""The package's imports run one way: no circle, and no module imports one on a higher floor.

Read from the source (ast), top-level imports and those inside functions alike, so an import
moved into a function to dodge a circle is still seen.
"""

import ast
import glob
import os

from tests import cli

PACKAGE = os.path.join(cli.ROOT, 'alexnet_jax')

# Floors, lowest first: a module imports only from its own floor or those below.
FLOORS = (
    ('geometry',),                # the net's spatial arithmetic: integers only
    ('config',),                  # the experiment and its rules
    ('',),                        # the library: model, parallel, train, checkpoints, ...
    ('data.',),                   # TensorFlow: datasets, the store, readers, demo data
    ('tools.',),                  # around the net: summary, benchmarks, figures, walkthrough
    ('main',),                    # the entry point: flags -> experiment -> mode
)


def floor(module: str) -> int:
  name = module.removeprefix('alexnet_jax.')
  for level in reversed(range(len(FLOORS))):
    if any(name == prefix or (prefix and name.startswith(prefix)) for prefix in FLOORS[level]):
      return level
  return FLOORS.index(('',))


def _module_name(path: str) -> str:
  relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-len('.py')]
  return relative.replace(os.sep, '.').removesuffix('.__init__')


def package_imports() -> dict[str, set[str]]:
  """{module: the package's modules it imports}, every import statement counted."""
  paths = glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True)
  modules = {_module_name(path) for path in paths}
  graph = {}
  for path in paths:
    with open(path) as f:
      tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        imported |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module:
        # `from alexnet_jax.data import demo_data` imports a module; `from x import Name` x.
        for alias in node.names:
          full = f'{node.module}.{alias.name}'
          imported.add(full if full in modules else node.module)
    name = _module_name(path)
    graph[name] = {m for m in imported if m in modules and m != name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The circles of the import graph (one path around each strongly connected part)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):  # Tarjan's strongly connected components
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for target in sorted(graph.get(node, ())):
      if target not in index:
        visit(target)
        low[node] = min(low[node], low[target])
      elif target in on_stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def upward(graph: dict[str, set[str]]) -> list[str]:
  return sorted(f'{module} imports {target}' for module, targets in graph.items()
                for target in targets if floor(target) > floor(module))


def test_the_package_has_no_import_circle():
  assert cycles(package_imports()) == []


def test_no_module_imports_from_a_higher_floor():
  assert upward(package_imports()) == []


def test_a_back_import_is_caught():
  graph = package_imports()
  assert 'alexnet_jax.model' in graph['alexnet_jax.parallel']
  graph['alexnet_jax.model'] = graph['alexnet_jax.model'] | {'alexnet_jax.parallel'}
  assert ['alexnet_jax.model', 'alexnet_jax.parallel'] in cycles(graph)
  graph['alexnet_jax.config'] = graph['alexnet_jax.config'] | {'alexnet_jax.model'}
  assert 'alexnet_jax.config imports alexnet_jax.model' in upward(graph)
