"""Docs that cannot go stale: every project name, command and path written down resolves (issue 23, item 5).

Sources: README.md, and the docstrings and comments of tapir/**/*.py, experiments/*.py, scripts/*.py and configs/*.py.
  names     `tapir.a.b.C.d` (and `experiments.`, `scripts.`, `configs.`): the longest prefix that is a module file is
            imported, the rest resolved as attributes (or a class's dataclass / NamedTuple fields, annotations,
            `self.x = ...`). Runners, scripts and configs are read with ast: two runners imported together would
            define their absl flags twice.
  commands  `python -m module ...` (from the repository root): the module exists; for a runner or script of ours
            every `--flag` is defined (absl or argparse, read with ast, or its `--help` when made at run time), a
            config flag (`--config configs/x.py[:preset]`) names a file and a preset its `get_config` accepts, and
            `--config.a.b=value` a field of that config, not a renamed one. A `--config.a.b` outside a command must
            be a field of some configs/*.py.
  paths     `tapir/...`, `configs/...`, `tests/...`, `docs/...` (and the other top folders) exist, unless written
            right after another repository's name (`google-deepmind/tapnet configs/x.py`); `configs/x.py:preset` loads.
Not checked: other packages (`jax.`, `tapnet.`), file names (`tapir.npz`), placeholders (`tapir.<family>`, `:<preset>`,
`configs/<file>.py`, `...`, `[--config.field=value ...]`).
"""

import ast
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import io
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap
import tokenize
from typing import NamedTuple

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([REPO / 'README.md', *(REPO / 'tapir').rglob('*.py'),
                  *[p for folder in ('experiments', 'scripts', 'configs') for p in (REPO / folder).glob('*.py')]])
PROJECT = ('tapir', 'experiments', 'scripts', 'configs')
TOP_FOLDERS = ('tapir', 'configs', 'experiments', 'scripts', 'tests', 'docs', '.ci')
# A last part like these makes `tapir.npz` a file name, not a Python name.
FILE_SUFFIXES = frozenset('py npy npz pt pth json md mp4 png jpg csv pkl txt sh gz zip yaml toml safetensors '
                          'jaxexport'.split())
NAME_RE = re.compile(r'(?<![\w./~\-])((?:' + '|'.join(PROJECT) + r')(?:\.[A-Za-z_]\w*)+)(?![\w/])')
PATH_RE = re.compile(r'(?<![\w./~\-:])((?:' + '|'.join(re.escape(f) for f in TOP_FOLDERS) + r')/[\w./*\-]*)(?::(\w+))?')
OTHER_REPO_RE = re.compile(r'(?<![\w./\-])([\w\-]+)/[\w.\-]+(?:\'s)?\s+`?$')  # `owner/repo ` just before a path
COMMAND_RE = re.compile(r'(?<![\w/.\-])python3? +(?:-m +[\w.]+|scripts/[\w./\-]+\.py)')
OVERRIDE_RE = re.compile(r'--config\.([A-Za-z_][\w.]*\w)')
CONFIG_VALUE_RE = re.compile(r'^(?P<file>[\w./\-]+\.py)(?:(?P<optional>\[)?:(?P<preset>[^\]]*)\]?)?$')
ABSL_BUILTINS = frozenset({'flagfile', 'undefok', 'help', 'helpshort', 'helpfull', 'helpxml'})


class Segment(NamedTuple):
  text: str  # its first line is line `line` of the file
  line: int


class Flags(NamedTuple):
  names: frozenset[str]
  booleans: frozenset[str]  # also take --noname
  configs: frozenset[str]  # ml_collections config flags: --name path[:preset], --name.field=value


def segments(text: str, python: bool) -> list[Segment]:
  """Markdown: the whole text, fence lines blanked (so their backticks pair with nothing); Python: docstrings (any
  string statement, as written in the source) and runs of comments on consecutive lines."""
  if not python:
    return [Segment('\n'.join('' if l.lstrip().startswith('```') else l for l in text.split('\n')), 1)]
  lines = text.split('\n')
  found = [Segment('\n'.join(lines[n.lineno - 1:n.end_lineno]), n.lineno) for n in ast.walk(ast.parse(text))
           if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)]
  comments = [(t.start[0], t.string.lstrip('#')) for t in tokenize.generate_tokens(io.StringIO(text).readline)
              if t.type == tokenize.COMMENT]
  run = []
  for line, comment in comments + [(-2, '')]:
    if run and line != run[-1][0] + 1:
      found.append(Segment('\n'.join(c for _, c in run), run[0][0]))
      run = []
    run.append((line, comment))
  return found


def _line(segment: Segment, offset: int) -> int:
  return segment.line + segment.text.count('\n', 0, offset)


def _module_path(parts: list[str]) -> pathlib.Path | None:
  base = REPO.joinpath(*parts)
  for path in (base.with_name(base.name + '.py'), base / '__init__.py'):
    if path.is_file():
      return path
  return base if len(parts) == 1 and base.is_dir() else None  # configs/, scripts/: folders without __init__


def _assigned_on_self(cls: type) -> set[str]:
  try:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))  # a nested class's source is indented
  except (OSError, TypeError, SyntaxError):
    return set()
  return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
          and isinstance(n.value, ast.Name) and n.value.id == 'self'}


def _member(obj, attr: str) -> tuple[bool, object]:
  """(found, value): an attribute, or what a class declares without holding it as a class attribute."""
  try:
    return True, getattr(obj, attr)
  except AttributeError:
    if not inspect.isclass(obj):
      return False, None
  declared = set(getattr(obj, '_fields', ()))
  declared |= {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
  for klass in obj.__mro__[:-1]:
    declared |= set(getattr(klass, '__annotations__', {})) | _assigned_on_self(klass)
  return attr in declared, None  # a field without a class value: nothing further is checked


def _static_names(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split('.')[0] for a in node.names)
  return names


@functools.cache
def resolve_name(name: str) -> str | None:
  """None if `name` resolves, else what does not."""
  parts = name.split('.')
  cut = next(i for i in range(len(parts), 0, -1) if _module_path(parts[:i]))  # parts[0]: a top folder
  attrs, done = parts[cut:], parts[:cut]
  if parts[0] != 'tapir':  # runners, scripts, configs: read, not imported
    if attrs and (_module_path(done).is_dir() or attrs[0] not in _static_names(_module_path(done))):
      return f'{".".join(done)} defines no {attrs[0]!r}'
    return None
  try:
    obj = importlib.import_module('.'.join(done))
  except Exception as e:  # pylint: disable=broad-except
    return f'importing {".".join(done)} fails: {type(e).__name__}: {e}'
  for attr in attrs:
    if obj is None:  # past a declared field
      return None
    found, obj = _member(obj, attr)
    if not found:
      return f'{".".join(done)} has no attribute {attr!r}'
    done.append(attr)
  return None


def name_failures(segment: Segment) -> list[tuple[int, str]]:
  out = []
  for m in NAME_RE.finditer(segment.text):
    problem = None if m.group(1).rsplit('.', 1)[1] in FILE_SUFFIXES else resolve_name(m.group(1))
    out += [(_line(segment, m.start()), f'name `{m.group(1)}` does not resolve: {problem}')] if problem else []
  return out


def path_failures(segment: Segment) -> list[tuple[int, str]]:
  out = []
  for m in PATH_RE.finditer(segment.text):
    path = m.group(1).rstrip('.,')
    before = OTHER_REPO_RE.search(segment.text[segment.text.rfind('\n', 0, m.start()) + 1:m.start()])
    if before and before.group(1) not in TOP_FOLDERS:  # a path in another repository
      continue
    if not (any(REPO.glob(path)) if '*' in path else (REPO / path).exists()):
      out.append((_line(segment, m.start()), f'path {path} does not exist'))
    elif m.group(2) and path.startswith('configs/'):  # `configs/x.py:preset`
      problem = load_config(path, m.group(2))[1]
      out += [(_line(segment, m.start()), problem)] if problem else []
  return out


@functools.cache
def defined_flags(path: pathlib.Path) -> Flags:
  """Flags a runner or script defines: absl `DEFINE_*('name'` and argparse `add_argument('--name'` calls."""
  text = path.read_text()
  names, booleans, configs, dynamic = set(), set(), set(), False
  for node in ast.walk(ast.parse(text)):
    if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Attribute, ast.Name)):
      continue
    func = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
    args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    args += [k.value.value for k in node.keywords if k.arg == 'name' and isinstance(k.value, ast.Constant)]
    if func.startswith('DEFINE') and args:
      names.add(args[0])
      (booleans if func in ('DEFINE_bool', 'DEFINE_boolean') else configs if 'config' in func else set()).add(args[0])
    elif func == 'add_argument':
      names.update(a[2:] for a in args if a.startswith('--'))
      dynamic |= not args
  if dynamic:  # flags made in a loop: ask the parser itself
    names.update(re.findall(r'--(\w[\w\-]*)', subprocess.run(
        [sys.executable, str(path), '--help'], cwd=REPO, capture_output=True, text=True, timeout=120,
        check=False).stdout))
  if 'absl' in text:
    from absl import app, flags, logging  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
    names |= ABSL_BUILTINS | {f.name for module, defined in flags.FLAGS.flags_by_module_dict().items()
                              if module.startswith('absl.') for f in defined}
  return Flags(frozenset(names | {'help'}), frozenset(booleans), frozenset(configs))


@functools.cache
def load_config(file: str, preset: str | None):
  """(config, None) or (None, the problem); `preset` None calls `get_config()`, as ml_collections does."""
  path = REPO / file
  if not path.is_file():
    return None, f'config file {file} does not exist'
  sys.path.insert(0, str(REPO))  # as when run from the repository root: configs import `configs.tapir`
  try:
    spec = importlib.util.spec_from_file_location(f'_docs_config_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return (module.get_config() if preset is None else module.get_config(preset)), None
  except Exception as e:  # pylint: disable=broad-except
    return None, f'{file}:{preset} does not load: {type(e).__name__}: {e}'
  finally:
    sys.path.remove(str(REPO))


def field_problem(config, dotted: str) -> str | None:
  from tapir import config_fields  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  node = config
  for i, part in enumerate(dotted.split('.')):
    if not hasattr(node, 'keys') or part not in node:
      return f'no field {".".join(dotted.split(".")[:i + 1])}'
    node = node[part]
  for table in (v for k, v in vars(config_fields).items() if k.endswith('_RENAMES')):
    if dotted in table and field_problem(config, table[dotted][0]) is None:
      return f'field {dotted} was renamed to {table[dotted][0]}'
  return None


def _tokens(text: str) -> list[str] | None:
  """The words up to `;`, `&&` or `|`; a `[... ...]` group (a syntax) dropped, other `[`/`]` (optional) removed."""
  text = re.sub(r'\[[^\[\]]*(?:\.\.\.|…)\]', ' ', text)
  lex = shlex.shlex(text, posix=True, punctuation_chars=';&|')
  lex.whitespace_split = True
  try:
    tokens = list(lex)
  except ValueError:  # an unclosed quote: the command goes on on the next line
    return None
  tokens = [t[1:] if t.startswith('[--') else t[:-1] if t.endswith(']') and '[' not in t else t for t in tokens]
  return tokens[:next((i for i, t in enumerate(tokens) if t and set(t) <= set(';&|')), len(tokens))]


def command_at(segment: Segment, start: int, spans: list[tuple[int, int]]) -> tuple[list[str] | None, int]:
  """(tokens, end offset) of the command at `start`: to the end of its backtick span, or of its line with `\\`
  continuations (and lines a quote stays open across)."""
  text = segment.text
  for a, b in spans:
    if a <= start < b:
      return _tokens(text[start:b].replace('\n', ' ')), b
  lines = text[start:].split('\n')
  command, used = lines[0], 1
  while used < min(len(lines), 8) and (command.rstrip().endswith('\\') or _tokens(command) is None):
    command = command.rstrip().removesuffix('\\') + ' ' + lines[used].strip()
    used += 1
  return _tokens(command), start + len('\n'.join(lines[:used]))


def _config_flag(name: str, value: str):
  m = CONFIG_VALUE_RE.match(value)
  if not m:
    return None, f'--{name} {value}: not a config file[:preset]'
  preset = m.group('preset')
  if m.group('optional') or (preset is not None and not re.fullmatch(r'\w*', preset)):  # [:preset], :<x>, :...
    preset = None
  config, problem = load_config(m.group('file'), preset)
  return config, (f'--{name}: {problem}' if problem else None)


def check_command(tokens: list[str]) -> list[str]:
  """Problems of one command, e.g. ['experiments.track defines no flag --no_such_flag']."""
  module = tokens[1] == '-m'
  target, args = tokens[1 + module], tokens[2 + module:]
  if module and target.split('.')[0] not in PROJECT:
    try:
      return [] if importlib.util.find_spec(target) else [f'module {target} is not importable']
    except ImportError as e:
      return [f'module {target} is not importable: {e}']
  path = _module_path(target.split('.')) if module else REPO / target  # run from the repository root
  if path is None or not path.exists():
    return [f'{"module" if module else "script"} {target} does not exist']
  if path.is_dir():
    return []
  defined, problems, configs = defined_flags(path), [], {}
  for i, arg in enumerate(args):
    if not arg.startswith('--') or '<' in arg:
      continue
    name, _, value = arg[2:].partition('=')
    head, _, field = name.partition('.')
    if field and head in defined.configs:
      problem = field_problem(configs[head], field) if configs.get(head) else None
      problems += [f'--{name}: {problem}'] if problem else []
    elif name in defined.configs:
      configs[head], problem = _config_flag(name, value or (args[i + 1] if i + 1 < len(args) else ''))
      problems += [problem] if problem else []
    elif name not in defined.names and not (name.startswith('no') and name[2:] in defined.booleans):
      problems.append(f'{target} defines no flag --{name}')
  return problems


@functools.cache
def _all_configs() -> list:
  return [c for p in sorted(REPO.glob('configs/*.py')) for c in [load_config(str(p.relative_to(REPO)), None)[0]] if c]


def command_failures(segment: Segment) -> list[tuple[int, str]]:
  spans = [(m.start(1), m.end(1)) for m in re.finditer(r'`([^`]+)`', segment.text)]
  out, inside = [], []
  for m in COMMAND_RE.finditer(segment.text):
    tokens, end = command_at(segment, m.start(), spans)
    inside.append((m.start(), end))
    line = _line(segment, m.start())
    if tokens is None:
      out.append((line, f'command at {m.group(0)!r} does not parse (unclosed quote)'))
      continue
    out += [(line, f'`{" ".join(tokens[:2 + (tokens[1] == "-m")])} ...`: {p}') for p in check_command(tokens)]
  for m in OVERRIDE_RE.finditer(segment.text):  # `--config.x.y` in prose: a field of some config
    if not any(a <= m.start() < b for a, b in inside) and all(field_problem(c, m.group(1)) for c in _all_configs()):
      out.append((_line(segment, m.start()), f'--config.{m.group(1)} is a field of no configs/*.py'))
  return out


CHECKS = {'names': name_failures, 'commands': command_failures, 'paths': path_failures}


def failures(text: str, python: bool, kinds=tuple(CHECKS)) -> list[tuple[int, str]]:
  return sorted(f for s in segments(text, python) for kind in kinds for f in CHECKS[kind](s))


@pytest.mark.parametrize('kind', list(CHECKS))
@pytest.mark.parametrize('source', [str(p.relative_to(REPO)) for p in SOURCES])
def test_references_resolve(source, kind):
  found = failures((REPO / source).read_text(), source.endswith('.py'), (kind,))
  assert not found, f'stale {kind} in {source}:\n' + '\n'.join(f'  {source}:{line}: {m}' for line, m in found)


def test_the_resolver_reports_stale_references():
  text = '''"""Uses `tapir.nonexistent.thing` and tapir.Tracker.no_such_method in prose.

    python -m experiments.track --video in.mp4 --no_such_flag --out o.mp4
    python -m experiments.train --config configs/tapir.py:no_such_preset --workdir w
    python -m experiments.train --config configs/tapir.py:cpu --workdir w --config.no_such.field=1 \\
        --config.model_kind=x
    python -m no_such_module_xyz --x
    python -m experiments.no_such_runner --x
    python scripts/compare_baselines.py --no_such_option 1

See `tapir/no_such_file.py`, `configs/no_such.py`, `configs/evaluate.py:no_such` and `--config.eval.no_such_field=3`.
"""
# and `tapir.data.streams.NoSuchThing` in a comment
'''
  found = [(line, re.sub(r': \w+Error: .*', '', message)) for line, message in failures(text, python=True)]
  assert found == [
      (1, 'name `tapir.Tracker.no_such_method` does not resolve: tapir.Tracker has no attribute \'no_such_method\''),
      (1, 'name `tapir.nonexistent.thing` does not resolve: tapir has no attribute \'nonexistent\''),
      (3, '`python -m experiments.track ...`: experiments.track defines no flag --no_such_flag'),
      (4, '`python -m experiments.train ...`: --config: configs/tapir.py:no_such_preset does not load'),
      (4, 'configs/tapir.py:no_such_preset does not load'),
      (5, '`python -m experiments.train ...`: --config.model_kind: field model_kind was renamed to task'),
      (5, '`python -m experiments.train ...`: --config.no_such.field: no field no_such'),
      (7, '`python -m no_such_module_xyz ...`: module no_such_module_xyz is not importable'),
      (8, '`python -m experiments.no_such_runner ...`: module experiments.no_such_runner does not exist'),
      (8, 'name `experiments.no_such_runner` does not resolve: experiments defines no \'no_such_runner\''),
      (9, '`python scripts/compare_baselines.py ...`: scripts/compare_baselines.py defines no flag --no_such_option'),
      (11, '--config.eval.no_such_field is a field of no configs/*.py'),
      (11, 'configs/evaluate.py:no_such does not load'),
      (11, 'path configs/no_such.py does not exist'),
      (11, 'path tapir/no_such_file.py does not exist'),
      (13, 'name `tapir.data.streams.NoSuchThing` does not resolve: tapir.data.streams has no attribute '
           '\'NoSuchThing\''),
  ], found


def test_the_resolver_accepts_what_is_not_a_stale_reference():
  text = '''Writes `tapir_checkpoint.npy`, `tapir.npz` and `/tmp/tapir_cpu/tapir.json`; `tapir.<family>`,
`tapir/~/…` (module paths), `configs/tapir.py`, ../shared/tapir/x.py, google-deepmind/tapnet `configs/x.py`;
`jax.numpy.zeros`, `tapnet.torch.x`, `tapir.tracking.online.OnlineTracker.step`, `tapir.Tracker.from_checkpoint`.
`python -m experiments.train --config configs/tapir.py[:preset] --workdir DIR [--config.field=value ...]`,
`--config.data.source=custom`, `--config.<field>=<value>`; a field set in `__init__`
(`tapir.tracking.core.ChunkedTracker.params`) and one without a default (`tapir.data.synthetic.scene.Scene.camera`).

```bash
python -m experiments.track --video in.mp4 --checkpoint ckpt.npy \\
    --noonline --points "0,1,2;3,4,5" --out o.mp4   # a comment --not_a_flag
python -m experiments.train --config=configs/bootstap.py:cpu --workdir w --config.selfsup.source='/x/*.mp4'
python scripts/soak.py --frames 30 --model_overrides '{"a": 1,
    "b": 2}'
```
'''
  assert failures(text, python=False) == []
