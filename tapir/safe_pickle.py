"""Reading pickles that cannot run code: the official checkpoints and the TAP-Vid annotation files are pickles.

A pickle may name any importable function and have it called while loading; that is how a crafted file takes over
a machine. `load` admits only what those files hold (dicts, lists, tuples, strings, bytes, numbers, numpy arrays,
dtypes and scalars) and refuses any other global with `UnsafePickleError`, naming it, before anything is called.
"""

import pickle
from typing import Any, BinaryIO

# Everything numpy's pickles of arrays, dtypes and scalars refer to (numpy 1 and 2 module names). Containers,
# strings and numbers need no globals: they are pickle opcodes.
ALLOWED_GLOBALS = frozenset({
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('_codecs', 'encode'),  # protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')
})


class UnsafePickleError(ValueError):
  """A pickle refers to something other than containers, numbers, strings and numpy arrays."""


class _RestrictedUnpickler(pickle.Unpickler):
  """Rebuilds only containers and numpy arrays/dtypes/scalars; refuses every other global by name."""

  error = UnsafePickleError

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in ALLOWED_GLOBALS:
      return super().find_class(module, name)
    raise self.error(f'refusing to load {module}.{name}: the file may contain only dicts, lists, strings, numbers '
                     'and numpy arrays (it may have been crafted to run code)')


def load(f: BinaryIO, error: type[UnsafePickleError] = UnsafePickleError) -> Any:
  """Unpickles `f` with the allow-list; a refused global raises `error` (a subclass of UnsafePickleError)."""
  unpickler = _RestrictedUnpickler(f)
  unpickler.error = error
  return unpickler.load()
