"""The package's import graph: no cycles, and no module importing one above it.

Imports inside functions count as well: a lazy import that closes a cycle still ties
the two modules' jobs together.
"""

import ast
import os

import mipae_jax

ROOT = os.path.dirname(mipae_jax.__file__)


def _modules() -> dict[str, str]:
  """`{dotted module name: file}` of every module of the package."""
  out = {}
  for folder, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(folder, f)
        name = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, '.')
        out[name.removesuffix('.__init__')] = path
  return out


def _imports(name: str, path: str, modules) -> set[str]:
  """The package's modules that `name` imports, anywhere in its file."""
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  found = set()
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      for alias in node.names:
        full = f'{base}.{alias.name}'
        found.add(full if full in modules else base)
    elif isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
  return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return out


def test_the_graph_reader_finds_a_cycle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_the_package_has_no_import_cycle():
  assert _cycles(_graph()) == []


def test_readers_and_metrics_do_not_import_the_layers_above_them():
  graph = _graph()
  # Restoring a run for readers sits below the training loop and the evaluation.
  assert not graph['mipae_jax.runs'] & {'mipae_jax.pipeline', 'mipae_jax.evaluate'}
  assert 'mipae_jax.pipeline' not in graph['mipae_jax.evaluate']
  # The stage loop and the batch sources sit below the run that wires them together.
  for name in ('stages', 'batches'):
    assert not graph[f'mipae_jax.{name}'] & {'mipae_jax.pipeline', 'mipae_jax.evaluate'}, name
  assert 'mipae_jax.stages' not in graph['mipae_jax.batches']
  # The MIG's estimators need no dataset (factor groups live in mipae_jax.factors).
  for name in ('knn', 'mig', 'probe', 'validation', 'image'):
    assert not {m for m in graph[f'mipae_jax.metrics.{name}']
                if m.startswith('mipae_jax.data')}, name
