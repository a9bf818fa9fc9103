"""Checkpoint file formats, byte level: the safe reader of the official pickled `.npy`, and our `.npz`.

Public entry points are in `tapir.checkpoint` (`load_checkpoint`, `save_checkpoint`, `read_checkpoint`).

  official  `.npy` (magic b'\\x93NUMPY') of a 0-d object array holding {'params': ..., 'state': ..., extras}.
            `read_official` parses the header with `numpy.lib.format` and unpickles the payload with
            `tapir.safe_pickle`'s allow-list: containers, strings and numbers are pickle opcodes; the only
            globals admitted are the numpy functions that rebuild arrays, dtypes and scalars. Anything else
            (how a crafted file runs code) raises `UnsafeCheckpointError` naming it, before it is called.
  ours      `.npz` zip (magic b'PK\\x03\\x04') of plain arrays, read with `allow_pickle=False`: entry
            `__tapir_checkpoint__` is UTF-8 JSON {"format_version", "arrays": [[tree, module, name], ...] (entry
            `a<i>` holds the i-th), "model_kwargs", "extra"}; nothing in it can run code.
A damaged or malformed file of either format raises ValueError naming it, whatever the parser underneath raised.
"""

import json
import os
import tempfile
from typing import Any, Callable, Mapping

import numpy as np
from numpy.lib import format as npy_format

from tapir import safe_pickle

NPY_MAGIC = b'\x93NUMPY'
ZIP_MAGIC = b'PK\x03\x04'
FORMAT_VERSION = 1  # of our .npz format
METADATA_ENTRY = '__tapir_checkpoint__'

class UnsafeCheckpointError(safe_pickle.UnsafePickleError):
  """A checkpoint's pickle refers to something other than containers, numbers, strings and numpy arrays."""


def read_official(path: str, f) -> Any:
  """The pickled dict of an official .npy, unpickled with the allow-list."""
  try:
    version = npy_format.read_magic(f)
    read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}.get(version)
    header = read_header(f) if read_header else None
  except Exception as e:  # a truncated or damaged header: ValueError, EOFError, SyntaxError, TypeError, ...
    raise ValueError(f'{path}: cannot read the .npy header ({type(e).__name__}: {e})') from e
  if header is None:
    raise ValueError(f'{path}: unsupported .npy format version {version}')
  shape, _, dtype = header
  if dtype != np.dtype(object):
    raise ValueError(f"{path} is not a TAPIR checkpoint: expected a pickled dict with 'params' (and 'state'); "
                     f'got a plain {dtype} array of shape {shape}')
  try:
    content = safe_pickle.load(f, UnsafeCheckpointError)
  except UnsafeCheckpointError as e:
    raise UnsafeCheckpointError(f'{path}: {e}') from None
  except Exception as e:  # truncated or corrupt pickles raise several kinds
    raise ValueError(f'{path}: cannot read the pickled checkpoint ({type(e).__name__}: {e})') from e
  if isinstance(content, np.ndarray) and content.dtype == object and content.shape == ():
    content = content.item()
  return content


def _npz_entry(path: str, npz, key: str) -> np.ndarray:
  if key not in npz.files:
    raise ValueError(f'{path}: the checkpoint has no entry {key}')
  try:
    return npz[key]
  except Exception as e:  # damaged members: zipfile.BadZipFile (CRC), zlib.error, EOFError, ValueError (header)
    raise ValueError(f'{path}: cannot read entry {key} ({type(e).__name__}: {e})') from e


def _is_index(arrays: Any) -> bool:
  return isinstance(arrays, list) and all(
      isinstance(a, list) and len(a) == 3 and a[0] in ('params', 'state') and all(isinstance(s, str) for s in a)
      for a in arrays)


def read_npz(path: str) -> tuple[dict, dict, dict | None, dict]:
  """(params, state, model settings as stored JSON or None, extra) of one of our .npz checkpoints."""
  with open(path, 'rb') as f:  # our handle: numpy leaks its own when the zip is damaged
    try:
      npz = np.load(f, allow_pickle=False)
    except Exception as e:  # not a zip, or a damaged one: zipfile.BadZipFile, OSError, EOFError, ValueError
      raise ValueError(f'{path}: cannot read it as an .npz checkpoint ({type(e).__name__}: {e})') from e
    return _npz_contents(path, npz)


def _npz_contents(path: str, npz) -> tuple[dict, dict, dict | None, dict]:
  with npz:
    if METADATA_ENTRY not in npz.files:
      raise ValueError(f'{path} is a zip/npz file but not a TAPIR checkpoint (no {METADATA_ENTRY} entry)')
    raw = _npz_entry(path, npz, METADATA_ENTRY)
    try:
      meta = json.loads(bytes(raw).decode('utf-8'))
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
      raise ValueError(f'{path}: entry {METADATA_ENTRY} is not UTF-8 JSON ({e})') from e
    version = meta.get('format_version') if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
      raise ValueError(f'{path}: checkpoint format_version {version!r} is not supported '
                       f'(this library reads version {FORMAT_VERSION})')
    if not (_is_index(meta.get('arrays')) and isinstance(meta.get('model_kwargs'), (dict, type(None)))
            and isinstance(meta.get('extra'), (dict, type(None)))):
      raise ValueError(f'{path}: entry {METADATA_ENTRY} must hold "arrays": [[params|state, module, name], ...], '
                       f'"model_kwargs" and "extra" as dicts (or null); got {meta!r:.200}')
    trees = {'params': {}, 'state': {}}
    for i, (tree, module, name) in enumerate(meta['arrays']):
      trees[tree].setdefault(module, {})[name] = _npz_entry(path, npz, f'a{i}')
  return trees['params'], trees['state'], meta.get('model_kwargs'), meta.get('extra') or {}


def _file_mode() -> int:
  """The mode `open` would give a new file (0o666 less the umask); mkstemp's own is 0o600."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


_FILE_MODE = _file_mode()  # read once, at import: os.umask is process-wide, so never while other threads run


def write_atomically(path: str, write) -> None:
  """`write(file)` into a temporary file beside `path`, fsync, then rename over `path` (with the mode a plain
  `open` would have given it, not mkstemp's owner-only one)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
  try:
    os.fchmod(fd, _FILE_MODE)
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def npz_writer(params: Mapping[str, Mapping[str, np.ndarray]], state: Mapping[str, Mapping[str, np.ndarray]],
               model_kwargs: Mapping[str, Any] | None, extra: Mapping[str, Any]) -> Callable[[Any], None]:
  """A `write(file)` for `write_atomically` that writes our .npz; raises ValueError for non-JSON settings."""
  index, arrays = [], {}
  for tree_name, tree in (('params', params), ('state', state)):
    for module, leaves in tree.items():
      for name, value in leaves.items():
        arrays[f'a{len(index)}'] = value
        index.append([tree_name, module, name])
  meta = dict(format_version=FORMAT_VERSION, arrays=index, model_kwargs=model_kwargs, extra=dict(extra))
  try:
    encoded = json.dumps(meta).encode('utf-8')
  except TypeError as e:
    raise ValueError(f'model_kwargs and extra entries must be JSON-serialisable: {e}') from e
  arrays[METADATA_ENTRY] = np.frombuffer(encoded, np.uint8)
  return lambda f: np.savez(f, **arrays)  # a file object: np.savez appends '.npz' only to names
