"""Reading pickles that cannot run code: the official checkpoints and the TAP-Vid annotation files are pickles.

A pickle may name any importable function and have it called while loading; that is how a crafted file takes over
a machine. `load` admits only what those files hold (dicts, lists, tuples, strings, bytes, numbers, numpy arrays,
dtypes and scalars) and refuses any other global with `UnsafePickleError`, naming it, before anything is called.

Formats that pickle references to other libraries (torch's `.pt`: `torch._utils._rebuild_tensor_v2`, storage types,
persistent ids for the raw storages) are read by giving `load` stand-ins: our own objects returned for those few
names, so the library named is never imported and nothing of it is called (`tapir.checkpoint_torch`).
"""

import pickle
from typing import Any, BinaryIO, Callable, Mapping

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
  stand_ins: Mapping[tuple[str, str], Any] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self.stand_ins:  # our replacement: the module named is never imported
      return self.stand_ins[module, name]
    if (module, name) in ALLOWED_GLOBALS:
      return super().find_class(module, name)
    raise self.error(f'refusing to load {module}.{name}: the file may contain only dicts, lists, strings, numbers '
                     'and numpy arrays (it may have been crafted to run code)')


def load(f: BinaryIO, error: type[UnsafePickleError] = UnsafePickleError, *,
         stand_ins: Mapping[tuple[str, str], Any] | None = None,
         persistent_load: Callable[[Any], Any] | None = None) -> Any:
  """Unpickles `f` with the allow-list; a refused global raises `error` (a subclass of UnsafePickleError).

  Args:
    stand_ins: {(module, name): object} returned for those globals instead of importing them (our own code that
      rebuilds what the named function would have built).
    persistent_load: called with each persistent id (pickle opcodes PERSID / BINPERSID); without it such ids
      are refused by pickle itself.
  """
  unpickler = _RestrictedUnpickler(f)
  unpickler.error = error
  if stand_ins:
    unpickler.stand_ins = dict(stand_ins)
  if persistent_load is not None:
    unpickler.persistent_load = persistent_load
  return unpickler.load()
