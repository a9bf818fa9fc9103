"""The package's layout rules, read from the source with `ast` (README 'Code map').

Imports run one way: `data/` knows nothing of models, tracking, training or evaluation; `models/` knows only
`conventions`; nobody imports the runners (`experiments/`) or `scripts/`; no module imports another that imports it
back, directly or through others. Imports inside functions count too: a lazy import is still a dependency.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'tapir'
MAX_LINES = 400


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """Project modules imported anywhere in `path` (`from a import b` counts `a.b` when that is a module)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f'{node.module}.{alias.name}' for alias in node.names]
      names = [n if n in known else node.module for n in names]
    else:
      continue
    found.update(n for n in names if n.split('.')[0] in ('tapir', 'experiments', 'scripts', 'configs'))
  return found


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  known = set(modules)
  graph = {}
  for name, path in modules.items():
    deps = _imports(path, known)
    # Importing `tapir.a.b` also runs the package `tapir.a`'s __init__; count the module itself, not its parents.
    graph[name] = {d for d in deps if d != name}
  return graph


def _in(module: str, package: str) -> bool:
  return module == package or module.startswith(package + '.')


# The README's code map, bottom up: a module may import its own layer and the layers before it, never a later one.
LAYERS = (
    ('tapir.conventions',),
    ('tapir.safe_pickle', 'tapir.video', 'tapir.config_fields'),
    ('tapir.losses', 'tapir.metrics'),
    ('tapir.models',),
    ('tapir.data',),
    ('tapir.checkpoint', 'tapir.checkpoint_io', 'tapir.checkpoint_torch'),
    ('tapir.tracking',),
    ('tapir.evaluation',),
    ('tapir.export',),
    ('tapir.training',),
)


def _layer(module: str) -> int:
  found = [i for i, layer in enumerate(LAYERS) if any(_in(module, p) for p in layer)]
  assert found, f'{module} is in no layer of the code map (README and LAYERS here)'
  return found[0]


def test_imports_run_down_the_code_map():
  graph = _graph()
  bad = [(m, d) for m, deps in graph.items() if m != 'tapir' for d in deps
         if d.startswith('tapir.') and _layer(d) > _layer(m)]
  assert not bad, f'imports from a later layer of the code map: {bad}'


def test_the_scanner_sees_the_package():
  graph = _graph()
  assert 'tapir.models.tapir' in graph and 'tapir.conventions' in graph['tapir.models.tapir']


@pytest.mark.parametrize('package, forbidden', [
    ('tapir.data', ('tapir.models', 'tapir.tracking', 'tapir.training', 'tapir.evaluation', 'tapir.checkpoint')),
])
def test_data_knows_nothing_above_it(package, forbidden):
  bad = [(m, d) for m, deps in _graph().items() if _in(m, package) for d in deps
         if any(_in(d, f) for f in forbidden)]
  assert not bad, f'{package} must not import {forbidden}: {bad}'


def test_models_import_only_conventions_and_each_other():
  bad = [(m, d) for m, deps in _graph().items() if _in(m, 'tapir.models') for d in deps
         if not (_in(d, 'tapir.models') or d == 'tapir.conventions' or d == 'tapir')]
  assert not bad, f'tapir.models may import only tapir.conventions and itself: {bad}'


def test_nothing_imports_the_runners_or_scripts():
  bad = [(m, d) for m, deps in _graph().items() for d in deps
         if d.split('.')[0] in ('experiments', 'scripts', 'configs')]
  assert not bad, f'the library must not import runners, scripts or configs: {bad}'


def test_no_import_cycles():
  graph = _graph()
  # The package root re-exports the public API, so everything "imports" it when it imports a submodule; it is
  # excluded from the cycle search, and a module below the root must not import the root itself.
  up = [(m, d) for m, deps in graph.items() if m != 'tapir' for d in deps if d == 'tapir']
  assert not up, f'modules must import what they need directly, not the package root: {up}'
  graph = {m: {d for d in deps if d in graph and d != 'tapir'} for m, deps in graph.items() if m != 'tapir'}
  cycles = []
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for dep in sorted(graph[node]):
      if state.get(dep) == 1:
        cycles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep)
    stack.pop()
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert not cycles, f'import cycles: {cycles}'


def test_every_file_is_readable_in_one_sitting():
  paths = [p for d in ('tapir', 'experiments', 'scripts', 'configs') for p in sorted((REPO / d).rglob('*.py'))]
  long = {str(p.relative_to(REPO)): n for p in paths if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, f'files over {MAX_LINES} lines: {long}'


def test_each_package_says_what_it_holds():
  empty = [str(p.relative_to(REPO)) for p in PACKAGE.rglob('__init__.py') if not ast.get_docstring(
      ast.parse(p.read_text()))]
  assert not empty, f'packages without a docstring: {empty}'
