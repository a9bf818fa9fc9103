"""Checkpoints: two file formats, one architecture rule, and diagnostics for a checkpoint that does not fit.

Formats (`load_checkpoint` tells them apart by their first bytes, never by the file name; bytes in
`tapir.checkpoint_io`):
  * ours (`save_checkpoint`'s default, what the trainer exports): an `.npz` of plain arrays with the model
    settings as JSON, read with `allow_pickle=False`: loading it can run no code.
  * official (`save_checkpoint(..., format='official')`, the released TAPIR / online TAPIR / BootsTAPIR /
    TAP-Net files): an `.npy` holding a pickled dict {'params': {module_path: {name: array}}, 'state': {...}},
    unpickled with an allow-list (containers, strings, numbers, numpy arrays / dtypes / scalars); any other
    global (the way a crafted file runs code) raises `UnsafeCheckpointError` naming it.
Our Haiku module tree uses the official module paths (`tapir/~/resnet/~/...`, `tapir/~/pips_mlp_mixer/...`),
so released trees load unchanged and official-format files we write load in the reference implementation.

The architecture rule (`resolve_model_kwargs`, used by every loader): settings stored in the checkpoint win;
otherwise the named preset; a preset that contradicts stored settings is an error; a checkpoint with neither
is accepted only when its parameter layout fits exactly one preset and that preset's every non-default setting
shows in the layout (temperature and causality never do).
"""

import functools
import inspect
import json
import os
from typing import Any, Mapping, NamedTuple

from absl import logging
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from tapir import checkpoint_io
from tapir.checkpoint_io import UnsafeCheckpointError  # pylint: disable=unused-import  (public)
from tapir.models import refinement

Params = Mapping[str, Mapping[str, Any]]

# Constructor settings of the released models, by preset name. Adding a released model is one entry here.
PRESETS: dict[str, dict[str, Any]] = {
    'tapir': dict(pyramid_level=0),
    'causal_tapir': dict(pyramid_level=1, use_causal_conv=True),
    'bootstapir': dict(pyramid_level=1, extra_convs=True, softmax_temperature=10.0),
    'causal_bootstapir': dict(pyramid_level=1, extra_convs=True, softmax_temperature=10.0, use_causal_conv=True),
}

MODEL_KWARGS_KEY = 'tapir_model_kwargs'  # official format: the optional entry with the constructor settings


class CheckpointContents(NamedTuple):
  params: dict  # {module_path: {name: np.ndarray}}
  state: dict  # Haiku state, same layout ({} for the released TAPIR checkpoints)
  model_kwargs: dict[str, Any] | None  # the `tapir.TAPIR` settings our trainer stores; None in released files
  format: str = 'official'  # 'official' (.npy pickle) or 'tapir' (our .npz)
  extra: dict | None = None  # other stored entries, e.g. {'global_step': 100}


def _to_numpy_tree(tree: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
  return {module: {name: np.asarray(value) for name, value in leaves.items()} for module, leaves in tree.items()}


def normalize_settings(value: Any) -> Any:
  """Lists -> tuples (recursively), numpy scalars -> Python, so stored settings compare equal to configs."""
  if isinstance(value, (list, tuple)):
    return tuple(normalize_settings(v) for v in value)
  if isinstance(value, Mapping):
    return {k: normalize_settings(v) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  return value


def _check_tree(path: str, what: str, tree: Any, allow_empty: bool) -> None:
  if not isinstance(tree, Mapping) or not all(
      isinstance(leaves, Mapping) and all(isinstance(v, (np.ndarray, np.generic)) for v in leaves.values())
      for leaves in tree.values()):
    raise ValueError(f"{path}: '{what}' must map module paths to {{name: array}} dicts")
  if not allow_empty and (not tree or not all(tree.values())):
    raise ValueError(f"{path}: '{what}' is empty or has a module without arrays: not a usable checkpoint")


def read_checkpoint(path: str | os.PathLike) -> CheckpointContents:
  """Reads a checkpoint of either format (told apart by content): params, state, stored settings and extras."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint not found: {path}')
  with open(path, 'rb') as f:
    magic = f.read(len(checkpoint_io.NPY_MAGIC))
    f.seek(0)
    if magic.startswith(checkpoint_io.ZIP_MAGIC):
      params, state, kwargs, extra = checkpoint_io.read_npz(path)
      kwargs = None if kwargs is None else normalize_settings(kwargs)
      fmt = 'tapir'
    elif magic == checkpoint_io.NPY_MAGIC:
      content = checkpoint_io.read_official(path, f)
      fmt = 'official'
      if not isinstance(content, Mapping) or 'params' not in content:
        raise ValueError(f"{path} is not a TAPIR checkpoint: expected a pickled dict with 'params' (and 'state'); "
                         f'got {type(content).__name__}')
      params, state = content['params'], content.get('state') or {}
      kwargs = content.get(MODEL_KWARGS_KEY)
      kwargs = None if kwargs is None else normalize_settings(dict(kwargs))
      extra = {k: normalize_settings(v) for k, v in content.items()
               if k not in ('params', 'state', MODEL_KWARGS_KEY)}
    else:
      raise ValueError(f'{path} is not a TAPIR checkpoint: it is neither an .npy (official format) nor an .npz '
                       f'(ours); it starts with {magic!r}')
  _check_tree(path, 'params', params, allow_empty=False)
  _check_tree(path, 'state', state, allow_empty=True)
  return CheckpointContents(_to_numpy_tree(params), _to_numpy_tree(state), kwargs, fmt, extra)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
  """Reads a checkpoint of either format. Returns (params, state) as nested dicts of numpy arrays."""
  contents = read_checkpoint(path)
  return contents.params, contents.state


def save_checkpoint(path: str | os.PathLike, params: Params, state: Params | None = None, *,
                    format: str = 'tapir',  # pylint: disable=redefined-builtin
                    model_kwargs: Mapping[str, Any] | None = None, **extra) -> None:
  """Writes params/state atomically (temporary file, fsync, rename), whatever the file name says.

  Args:
    format: 'tapir' (default): our pickle-free `.npz`; 'official': the released `.npy` pickle, for the
      reference code (its loader reads only 'params' and 'state').
    model_kwargs: the `tapir.TAPIR` settings, making the file self-describing (`resolve_model_kwargs`). Also
      accepted as the extra `tapir_model_kwargs=...` (`MODEL_KWARGS_KEY`).
    extra: JSON-able values stored beside the weights, e.g. `global_step`.
  """
  path = os.fspath(path)
  if MODEL_KWARGS_KEY in extra:
    if model_kwargs is not None:
      raise ValueError(f'give the model settings once: model_kwargs or {MODEL_KWARGS_KEY}, not both')
    model_kwargs = extra.pop(MODEL_KWARGS_KEY)
  params = _to_numpy_tree(jax.device_get(params))
  state = _to_numpy_tree(jax.device_get(state or {}))
  if not params:
    raise ValueError('params is empty: nothing to save')
  if format == 'official':
    content = {'params': params, 'state': state, **extra}
    if model_kwargs is not None:
      content[MODEL_KWARGS_KEY] = dict(model_kwargs)
    checkpoint_io.write_atomically(path, lambda f: np.save(f, content, allow_pickle=True))
    return
  if format != 'tapir':
    raise ValueError(f"format must be 'tapir' (pickle-free .npz) or 'official' (released .npy); got {format!r}")
  kwargs = None if model_kwargs is None else normalize_settings(dict(model_kwargs))
  checkpoint_io.write_atomically(path, checkpoint_io.npz_writer(params, state, kwargs, normalize_settings(extra)))



def tapir_defaults() -> dict[str, Any]:
  """`tapir.TAPIR`'s constructor defaults."""
  from tapir.models import tapir as tapir_lib  # pylint: disable=g-import-not-at-top
  signature = inspect.signature(tapir_lib.TAPIR.__init__)
  return {k: normalize_settings(p.default) for k, p in signature.parameters.items()
          if p.default is not inspect.Parameter.empty}


# Settings that change how the same numbers are computed (memory, formulation), not the model: a caller's value
# never contradicts a checkpoint's and is applied on top of stored settings.
EXECUTION_SETTINGS = frozenset({'remat_refinement', 'bilinear_interp_with_depthwise_conv', 'cross_replica_axis',
                                'feature_extractor_chunk_size', 'parallelize_query_extraction'})


def _conflicts(stored: Mapping[str, Any], named: Mapping[str, Any]) -> list[str]:
  defaults = tapir_defaults()
  out = []
  for key, value in sorted(named.items()):
    if key in EXECUTION_SETTINGS:
      continue
    have = normalize_settings(stored.get(key, defaults.get(key)))
    if have != normalize_settings(value):
      out.append(f'{key}={normalize_settings(value)!r} (checkpoint: {have!r})')
  return out


def preset_kwargs(preset: str, **overrides) -> dict[str, Any]:
  """The constructor settings of a preset (`PRESETS`), `overrides` on top."""
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose one of {sorted(PRESETS)}')
  return {**PRESETS[preset], **overrides}


def preset_of(model_kwargs: Mapping[str, Any]) -> str | None:
  """The preset whose every setting `model_kwargs` has (absent keys: TAPIR's defaults), or None."""
  for name, settings in PRESETS.items():
    if not _conflicts(model_kwargs, settings):
      return name
  return None


def _fits(params: Params, model_kwargs: Mapping[str, Any]) -> bool:
  want = _expected_shapes_cached(_freeze(model_kwargs))
  have = {m: {n: tuple(np.shape(v)) for n, v in leaves.items()} for m, leaves in params.items()}
  return want == have


def _shows_in_layout(preset: str, overrides: Mapping[str, Any]) -> bool:
  """Whether every non-default setting of the preset changes the parameter layout (so the layout implies it)."""
  defaults = tapir_defaults()
  settings = {**PRESETS[preset], **overrides}
  shapes = _expected_shapes_cached(_freeze(settings))
  for key, value in PRESETS[preset].items():
    if key not in overrides and normalize_settings(value) != defaults.get(key):
      without = {k: v for k, v in settings.items() if k != key}
      if _expected_shapes_cached(_freeze(without)) == shapes:
        return False
  return True


def resolve_model_kwargs(stored: Mapping[str, Any] | None, preset: str | Mapping[str, Any] | None = None,
                         params: Params | None = None,
                         overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The one architecture rule: which `tapir.TAPIR` settings a checkpoint is run with.

  Args:
    stored: the settings stored in the checkpoint (`CheckpointContents.model_kwargs`), None for released files.
    preset: a `PRESETS` name, or the full settings a caller was configured with (fine-tuning), or None.
    params: the checkpoint's parameters; needed only when neither `stored` nor `preset` is given.
    overrides: settings on top of the preset (e.g. a tiny architecture for tests).
  Returns:
    `stored` when there is one (any preset or override must agree with it: ValueError naming both otherwise);
    else the preset's settings with `overrides`; else the one preset the parameter layout implies.
  Raises:
    ValueError: contradiction, unknown preset, or a layout that does not determine the architecture (the
      message lists the presets that fit).
  """
  overrides = dict(overrides or {})
  named = dict(preset) if isinstance(preset, Mapping) else None
  if isinstance(preset, str):
    named = preset_kwargs(preset)
  if stored is not None:
    stored = normalize_settings(dict(stored))
    conflicts = _conflicts(stored, {**(named or {}), **overrides})
    if conflicts:
      what = f'preset {preset!r} contradicts' if isinstance(preset, str) else 'the requested settings contradict'
      raise ValueError(f'{what} the settings stored in the checkpoint: ' + '; '.join(conflicts) +
                       '. The stored settings describe the trained model: drop the preset/overrides or fix them.')
    execution = {k: v for k, v in {**(named or {}), **overrides}.items() if k in EXECUTION_SETTINGS}
    return {**stored, **normalize_settings(execution)}
  if named is not None:
    return normalize_settings({**named, **overrides})
  if params is None:
    raise ValueError('the checkpoint stores no model settings: name a preset (one of '
                     f'{sorted(PRESETS)})')
  fitting = [name for name in PRESETS if _fits(params, {**PRESETS[name], **overrides})]
  if len(fitting) == 1 and _shows_in_layout(fitting[0], overrides):
    logging.info('checkpoint stores no settings; its parameter layout is that of preset %r', fitting[0])
    return normalize_settings({**PRESETS[fitting[0]], **overrides})
  if not fitting:
    raise ValueError('the checkpoint stores no model settings and its parameter layout fits none of the presets '
                     f'{sorted(PRESETS)}' + (f' (with overrides {overrides})' if overrides else ''))
  raise ValueError('the checkpoint stores no model settings and its parameter layout does not determine the '
                   f'architecture: it fits preset(s) {fitting}, whose softmax temperature / causality cannot be '
                   'read off parameter shapes; name the preset')



def _freeze(kwargs: Mapping[str, Any]) -> str:
  return json.dumps(normalize_settings(dict(kwargs)), sort_keys=True)


@functools.lru_cache(maxsize=64)
def _expected_shapes_cached(frozen: str) -> dict[str, dict[str, tuple[int, ...]]]:
  return expected_shapes(normalize_settings(json.loads(frozen)))


def _settings_seen_in_shapes(params: Params) -> dict[str, Any]:
  """The settings parameter shapes show (not an architecture: temperature and causality never show)."""
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
    seen = _settings_seen_in_shapes(params)
    defaults = tapir_defaults()
    hints = {k: v for k, v in seen.items() if normalize_settings(model_kwargs.get(k, defaults.get(k))) != v}
    if hints:
      lines.append('  the checkpoint looks like: ' + ', '.join(f'{k}={v!r}' for k, v in sorted(hints.items())))
  except ValueError:
    pass
  raise ValueError('\n'.join(lines))
