"""Official `.npy` checkpoints: reading, writing, and diagnosing a checkpoint that does not fit a model.

File format (the released TAPIR / online TAPIR / BootsTAPIR checkpoints):
  np.load(path, allow_pickle=True).item() == {'params': {module_path: {name: array}}, 'state': {...}}
Our Haiku module tree uses the official module paths (`tapir/~/resnet/~/...`, `tapir/~/pips_mlp_mixer/...`),
so the trees load unchanged and checkpoints we write load in the reference implementation too.
"""

import os
import tempfile
from typing import Any, Mapping, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from tapir.models import refinement

Params = Mapping[str, Mapping[str, Any]]


def _to_numpy_tree(tree: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
  return {module: {name: np.asarray(value) for name, value in leaves.items()} for module, leaves in tree.items()}


class CheckpointContents(NamedTuple):
  params: dict  # {module_path: {name: array}}
  state: dict  # Haiku state, same layout ({} for the released checkpoints)
  model_kwargs: dict[str, Any] | None  # the `tapir.TAPIR` settings our trainer stores; None in released files


MODEL_KWARGS_KEY = 'tapir_model_kwargs'  # optional extra entry: the constructor settings, for our own checkpoints


def read_checkpoint(path: str | os.PathLike) -> CheckpointContents:
  """Reads an official-format checkpoint once: params, state and (for files we wrote) the model settings."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint not found: {path}')
  try:
    content = np.load(path, allow_pickle=True)
    content = content.item() if isinstance(content, np.ndarray) and content.dtype == object else content
  except Exception as e:  # numpy raises several kinds on a non-npy file
    raise ValueError(f'{path} is not a TAPIR .npy checkpoint (np.load failed: {e})') from e
  if not isinstance(content, Mapping) or 'params' not in content:
    raise ValueError(f"{path} is not a TAPIR checkpoint: expected a pickled dict with 'params' (and 'state'); "
                     f'got {type(content).__name__}')
  params = content['params']
  if not isinstance(params, Mapping) or not all(isinstance(v, Mapping) for v in params.values()):
    raise ValueError(f"{path}: 'params' must map module paths to {{name: array}} dicts")
  kwargs = content.get(MODEL_KWARGS_KEY)
  return CheckpointContents(_to_numpy_tree(params), _to_numpy_tree(content.get('state') or {}),
                            None if kwargs is None else dict(kwargs))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
  """Reads an official-format checkpoint. Returns (params, state) as nested dicts of numpy arrays."""
  contents = read_checkpoint(path)
  return contents.params, contents.state


def read_model_kwargs(path: str | os.PathLike) -> dict[str, Any] | None:
  """The `tapir.TAPIR` settings stored in a checkpoint we wrote (None for the released checkpoints)."""
  return read_checkpoint(path).model_kwargs


def save_checkpoint(path: str | os.PathLike, params: Params, state: Params | None = None, **extra) -> None:
  """Writes params/state in the official format (atomically: a temporary file renamed into place).

  `extra` entries (e.g. `global_step`, or `tapir_model_kwargs`, the constructor settings that make the file
  self-describing) are stored beside 'params' and 'state', as the reference trainer stores its extras; the
  reference loader reads only 'params' and 'state'.
  """
  path = os.fspath(path)
  content = {'params': _to_numpy_tree(jax.device_get(params)), 'state': _to_numpy_tree(jax.device_get(state or {}))}
  content.update(extra)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix='.npy.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.save(f, content, allow_pickle=True)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def infer_model_kwargs(params: Params) -> dict[str, Any]:
  """Reads the architecture settings off a checkpoint's parameter shapes."""
  mixer = params.get('tapir/~/pips_mlp_mixer/linear')
  if mixer is None:
    raise ValueError('parameters have no tapir/~/pips_mlp_mixer/linear: not a TAPIR checkpoint')
  in_width, hidden = mixer['w'].shape
  pyramid_level = (in_width - refinement.mixer_input_width(0)) // refinement.PATCH_WIDTH**2
  num_blocks = sum(1 for k in params if k.startswith('tapir/~/pips_mlp_mixer/block') and k.endswith('/mlp2_up'))
  blocks_per_group = tuple(
      sum(1 for k in params if k.startswith(f'tapir/~/resnet/~/block_group_{g}/~/block_') and k.endswith('/conv_0'))
      for g in range(4))
  normalization = 'batchnorm' if any('/batchnorm_0' in k for k in params) else 'instancenorm'
  num_extra = sum(1 for k in params if k.startswith('tapir/~/extra_convs/layer_norm'))
  kwargs = dict(pyramid_level=int(pyramid_level), mixer_hidden_dim=int(hidden), num_mixer_blocks=num_blocks,
                blocks_per_group=blocks_per_group, normalization=normalization, extra_convs=num_extra > 0)
  if num_extra:
    kwargs['extra_convs_kwargs'] = dict(num_layers=num_extra)
  return kwargs


def expected_shapes(model_kwargs: Mapping[str, Any]) -> dict[str, dict[str, tuple[int, ...]]]:
  """Parameter shapes of `tapir.TAPIR(**model_kwargs)` (computed abstractly, no memory or FLOPs)."""
  from tapir.models import tapir as tapir_lib  # pylint: disable=g-import-not-at-top

  kwargs = dict(model_kwargs)
  kwargs['initial_resolution'] = (16, 16)  # shapes do not depend on the resolution

  def forward(video, queries):
    return tapir_lib.TAPIR(**kwargs)(video, is_training=False, query_points=queries)

  init = hk.transform_with_state(forward).init
  video = jax.ShapeDtypeStruct((1, 2, 16, 16, 3), jnp.float32)
  queries = jax.ShapeDtypeStruct((1, 1, 3), jnp.float32)
  params, _ = jax.eval_shape(init, jax.random.PRNGKey(0), video, queries)
  return {m: {n: tuple(v.shape) for n, v in leaves.items()} for m, leaves in params.items()}


def check_params(params: Params, model_kwargs: Mapping[str, Any]) -> None:
  """Raises ValueError listing missing, unexpected and mis-shaped parameters, with likely settings."""
  want = expected_shapes(model_kwargs)
  have = {m: {n: tuple(np.shape(v)) for n, v in leaves.items()} for m, leaves in params.items()}
  flat = lambda tree: {f'{m}/{n}': s for m, leaves in tree.items() for n, s in leaves.items()}
  want_flat, have_flat = flat(want), flat(have)
  missing = sorted(set(want_flat) - set(have_flat))
  unexpected = sorted(set(have_flat) - set(want_flat))
  misshaped = sorted(k for k in set(want_flat) & set(have_flat) if want_flat[k] != have_flat[k])
  if not (missing or unexpected or misshaped):
    return
  lines = ['checkpoint does not fit TAPIR(' + ', '.join(f'{k}={v!r}' for k, v in sorted(model_kwargs.items())) +
           ')']
  show = lambda names: ', '.join(names[:8]) + (f', ... ({len(names)} in all)' if len(names) > 8 else '')
  if missing:
    lines.append(f'  missing: {show(missing)}')
  if unexpected:
    lines.append(f'  unexpected: {show(unexpected)}')
  if misshaped:
    lines.append('  mis-shaped: ' + show([f'{k} {have_flat[k]} (model wants {want_flat[k]})' for k in misshaped]))
  try:
    inferred = infer_model_kwargs(params)
    norm = lambda v: tuple(v) if isinstance(v, list) else v
    hints = {k: v for k, v in inferred.items() if norm(model_kwargs.get(k, _DEFAULTS.get(k))) != v}
    if hints:
      lines.append('  the checkpoint looks like: ' + ', '.join(f'{k}={v!r}' for k, v in sorted(hints.items())))
  except ValueError:
    pass
  raise ValueError('\n'.join(lines))


# Constructor defaults of tapir.TAPIR that `infer_model_kwargs` can read off a checkpoint.
_DEFAULTS = dict(pyramid_level=1, mixer_hidden_dim=512, num_mixer_blocks=12, blocks_per_group=(2, 2, 2, 2),
                 normalization='instancenorm', extra_convs=False, extra_convs_kwargs=None)
