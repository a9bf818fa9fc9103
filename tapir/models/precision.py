"""Compute precision for inference: the convolutions and dense layers in bfloat16, everything else in float32.

    with precision.compute_dtype('bfloat16'):   # inside a Haiku transform, around the model's call
      out = tapir.TAPIR(**kwargs)(video, is_training=False, query_points=queries)

Every `hk.Conv2D`, `hk.Conv3D` and `hk.Linear` call inside the context takes its inputs and weights as bfloat16
and gives float32 back; normalisation, the cost volume's feature products, the soft argmax, the bilinear
sampling and the outputs stay float32, and the stored parameters are untouched (float32 checkpoints load as they
are). 'float32' (the default everywhere) changes nothing: the code path is the one the golden tests check.
The accuracy this costs on the golden inputs, and its speed, are stated in the README (Performance).
"""

import contextlib
from typing import Any, Iterator

import haiku as hk
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ('float32', 'bfloat16')
_LAYERS = (hk.Conv2D, hk.Conv3D, hk.Linear)


def check_compute_dtype(dtype: Any, name: str = 'dtype') -> str:
  """`dtype` as one of COMPUTE_DTYPES (a name or a numpy / jax dtype); else ValueError naming `name`."""
  try:
    canonical = jnp.dtype(dtype).name
  except TypeError:
    canonical = None
  if isinstance(dtype, bool) or dtype is None or canonical not in COMPUTE_DTYPES:
    raise ValueError(f'{name} must be one of {COMPUTE_DTYPES}; got {dtype!r}')
  return canonical


def _cast_floats(tree: Any, dtype) -> Any:
  cast = lambda x: x.astype(dtype) if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree_util.tree_map(cast, tree)


@contextlib.contextmanager
def compute_dtype(dtype: Any = 'float32') -> Iterator[None]:
  """Runs the convolutions and dense layers called inside in `dtype` (module docstring)."""
  dtype = jnp.dtype(check_compute_dtype(dtype))
  if dtype == jnp.float32:
    yield
    return

  def weights_in_dtype(next_getter, value, context):
    del context
    return next_getter(_cast_floats(value, dtype))

  def layer_in_dtype(next_f, args, kwargs, context: hk.MethodContext):
    if context.method_name != '__call__' or not isinstance(context.module, _LAYERS):
      return next_f(*args, **kwargs)
    args, kwargs = _cast_floats((args, kwargs), dtype)
    with hk.custom_getter(weights_in_dtype):
      out = next_f(*args, **kwargs)
    return _cast_floats(out, jnp.float32)

  with hk.intercept_methods(layer_in_dtype):
    yield
