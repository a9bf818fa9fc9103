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

import os
from typing import Any, Mapping, NamedTuple

from absl import logging
import jax
import numpy as np

from tapir import checkpoint_io
from tapir import checkpoint_torch
from tapir.checkpoint_io import UnsafeCheckpointError  # pylint: disable=unused-import  (public)
from tapir.models import families
from tapir.models.families import normalize_settings  # pylint: disable=unused-import  (public)

Params = Mapping[str, Mapping[str, Any]]

# Constructor settings of the released models, by preset name, across families (`tapir.models.families`).
PRESETS = families.PRESETS

MODEL_KWARGS_KEY = 'tapir_model_kwargs'  # official format: the optional entry with the constructor settings
FAMILY_KEY = 'model_family'  # both formats: the stored model family (`tapir.models.families`), among the extras


class CheckpointContents(NamedTuple):
  params: dict  # {module_path: {name: np.ndarray}}
  state: dict  # Haiku state, same layout ({} for the released TAPIR checkpoints)
  model_kwargs: dict[str, Any] | None  # the model's constructor settings our trainer stores; None in released files
  format: str = 'official'  # 'official' (.npy pickle) or 'tapir' (our .npz)
  extra: dict | None = None  # other stored entries, e.g. {'global_step': 100}
  family: str | None = None  # 'tapir' / 'tapnet': stored, else read off the module paths; None if neither


def _to_numpy_tree(tree: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
  return {module: {name: np.asarray(value) for name, value in leaves.items()} for module, leaves in tree.items()}


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
    head = magic + f.read(10)  # safetensors: 8-byte header length, then '{'
    f.seek(0)
    safetensors = checkpoint_torch.is_safetensors(head)
    if safetensors or (magic.startswith(checkpoint_io.ZIP_MAGIC) and checkpoint_torch.is_torch_zip(path)):
      fmt = 'safetensors' if safetensors else 'torch'  # the PyTorch port's weights
      params, state, kwargs = checkpoint_torch.read_torch_checkpoint(path)
      extra = {}
    elif magic.startswith(checkpoint_io.ZIP_MAGIC):
      params, state, kwargs, extra = checkpoint_io.read_npz(path)
      kwargs = None if kwargs is None else normalize_settings(kwargs)
      fmt = 'tapir'
    elif magic == checkpoint_io.NPY_MAGIC:
      content = checkpoint_io.read_official(path, f)
      fmt = 'official'
      if not isinstance(content, Mapping) or 'params' not in content:
        raise ValueError(f"{path} is not a TAPIR checkpoint: expected a pickled dict with 'params' (and 'state'); "
                         f'got {type(content).__name__}')
      params, state = content['params'], content.get('state')
      state = {} if state is None else state
      kwargs = content.get(MODEL_KWARGS_KEY)
      if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ValueError(f"{path}: '{MODEL_KWARGS_KEY}' must be a dict of constructor settings; got "
                         f'{type(kwargs).__name__}')
      kwargs = None if kwargs is None else normalize_settings(dict(kwargs))
      extra = {k: normalize_settings(v) for k, v in content.items()
               if k not in ('params', 'state', MODEL_KWARGS_KEY)}
    else:
      raise ValueError(f'{path} is not a TAPIR checkpoint: it is neither an .npy (official format) nor an .npz '
                       f'(ours); it starts with {magic!r}')
  _check_tree(path, 'params', params, allow_empty=False)
  _check_tree(path, 'state', state, allow_empty=True)
  extra = dict(extra)
  family = extra.pop(FAMILY_KEY, None)
  if family is None:
    family = families.name_of_params(params)
  elif family not in families.FAMILIES:
    raise ValueError(f'{path}: stored model family {family!r} is not one of {sorted(families.FAMILIES)}')
  return CheckpointContents(_to_numpy_tree(params), _to_numpy_tree(state), kwargs, fmt, extra, family)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
  """Reads a checkpoint of either format. Returns (params, state) as nested dicts of numpy arrays."""
  contents = read_checkpoint(path)
  return contents.params, contents.state


def save_checkpoint(path: str | os.PathLike, params: Params, state: Params | None = None, *,
                    format: str = 'tapir',  # pylint: disable=redefined-builtin
                    model_kwargs: Mapping[str, Any] | None = None, family: str | None = None, **extra) -> None:
  """Writes params/state atomically (temporary file, fsync, rename), whatever the file name says.

  Args:
    format: 'tapir' (default): our pickle-free `.npz`; 'official': the released `.npy` pickle, for the
      reference code (its loader reads only 'params' and 'state').
    model_kwargs: the model's constructor settings, making the file self-describing (`resolve_model_kwargs`).
      Also accepted as the extra `tapir_model_kwargs=...` (`MODEL_KWARGS_KEY`).
    family: the model family ('tapir', 'tapnet'), stored beside the settings; by default read off the
      parameters' module paths (and not stored when they belong to no known family).
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
  if family is not None:
    families.get(family)  # ValueError naming the known families
    if not families.get(family).owns(params):
      raise ValueError(f'family={family!r} but the parameters are not a {family} model\'s (module paths '
                       f'{sorted(params)[:2]}...)')
  else:
    family = families.name_of_params(params)
  if family is not None:
    extra[FAMILY_KEY] = family
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
  return families.get('tapir').defaults()


def _family_for(preset: str | Mapping[str, Any] | None, family: str | None,
                params: Params | None) -> families.ModelFamily:
  """The family a request is about: the preset's, else the one named, else the parameters', else TAPIR."""
  found = [f for f in (families.of_preset(preset) if isinstance(preset, str) else None,
                       families.get(family) if family else None) if f is not None]
  if params and not found:
    found.append(families.of_params(params))
  if len({f.name for f in found}) > 1:
    raise ValueError(f'preset {preset!r} belongs to family {found[0].name!r} but the checkpoint is a '
                     f'{found[1].name!r} model')
  return found[0] if found else families.get('tapir')


def _conflicts(family: families.ModelFamily, stored: Mapping[str, Any], named: Mapping[str, Any]) -> list[str]:
  defaults = family.defaults()
  out = []
  for key, value in sorted(named.items()):
    if key in family.execution_settings:
      continue
    have = normalize_settings(stored.get(key, defaults.get(key)))
    if have != normalize_settings(value):
      out.append(f'{key}={normalize_settings(value)!r} (checkpoint: {have!r})')
  return out


def preset_kwargs(preset: str, **overrides) -> dict[str, Any]:
  """The constructor settings of a preset (`PRESETS`), `overrides` on top."""
  families.of_preset(preset)  # ValueError naming the presets for an unknown one
  return {**PRESETS[preset], **overrides}


def preset_of(model_kwargs: Mapping[str, Any], family: str = 'tapir') -> str | None:
  """The preset of `family` whose every setting `model_kwargs` has (absent keys: defaults), or None."""
  fam = families.get(family)
  for name, settings in fam.presets.items():
    if not _conflicts(fam, model_kwargs, settings):
      return name
  return None


def _shape_tree(tree: Params) -> dict:
  return {m: {n: tuple(np.shape(v)) for n, v in leaves.items()} for m, leaves in tree.items()}


def _fits(family: families.ModelFamily, params: Params, model_kwargs: Mapping[str, Any]) -> bool:
  return family.expected_shapes(model_kwargs)[0] == _shape_tree(params)


def _shows_in_layout(family: families.ModelFamily, preset: str, overrides: Mapping[str, Any]) -> bool:
  """Whether every non-default setting of the preset changes the parameter layout (so the layout implies it)."""
  defaults = family.defaults()
  settings = {**family.presets[preset], **overrides}
  shapes = family.expected_shapes(settings)
  for key, value in family.presets[preset].items():
    if key not in overrides and normalize_settings(value) != defaults.get(key):
      without = {k: v for k, v in settings.items() if k != key}
      if family.expected_shapes(without) == shapes:
        return False
  return True


def resolve_model_kwargs(stored: Mapping[str, Any] | None, preset: str | Mapping[str, Any] | None = None,
                         params: Params | None = None, overrides: Mapping[str, Any] | None = None,
                         family: str | None = None) -> dict[str, Any]:
  """The one architecture rule: which constructor settings a checkpoint is run with, for every model family.

  Args:
    stored: the settings stored in the checkpoint (`CheckpointContents.model_kwargs`), None for released files.
    preset: a `PRESETS` name, or the full settings a caller was configured with (fine-tuning), or None.
    params: the checkpoint's parameters; needed only when neither `stored` nor `preset` is given.
    overrides: settings on top of the preset (e.g. a tiny architecture for tests).
    family: the model family (`tapir.models.families`); by default the preset's, else the parameters'.
  Returns:
    `stored` when there is one (any preset or override must agree with it: ValueError naming both otherwise);
    else the preset's settings with `overrides`; else the one preset the parameter layout implies.
  Raises:
    ValueError: contradiction, unknown preset, a preset of another family, or a layout that does not determine
      the architecture (the message lists the presets that fit).
  """
  fam = _family_for(preset, family, params)
  overrides = dict(overrides or {})
  named = dict(preset) if isinstance(preset, Mapping) else None
  if isinstance(preset, str):
    named = preset_kwargs(preset)
  if stored is not None:
    stored = normalize_settings(dict(stored))
    conflicts = _conflicts(fam, stored, {**(named or {}), **overrides})
    if conflicts:
      what = f'preset {preset!r} contradicts' if isinstance(preset, str) else 'the requested settings contradict'
      raise ValueError(f'{what} the settings stored in the checkpoint: ' + '; '.join(conflicts) +
                       '. The stored settings describe the trained model: drop the preset/overrides or fix them.')
    execution = {k: v for k, v in {**(named or {}), **overrides}.items() if k in fam.execution_settings}
    return {**stored, **normalize_settings(execution)}
  if named is not None:
    return normalize_settings({**named, **overrides})
  if params is None:
    raise ValueError(f'the checkpoint stores no model settings: name a preset (one of {sorted(fam.presets)})')
  fitting = [name for name in fam.presets if _fits(fam, params, {**fam.presets[name], **overrides})]
  if len(fitting) == 1 and _shows_in_layout(fam, fitting[0], overrides):
    logging.info('checkpoint stores no settings; its parameter layout is that of preset %r', fitting[0])
    return normalize_settings({**fam.presets[fitting[0]], **overrides})
  if not fitting:
    raise ValueError('the checkpoint stores no model settings and its parameter layout fits none of the presets '
                     f'{sorted(fam.presets)}' + (f' (with overrides {overrides})' if overrides else ''))
  raise ValueError('the checkpoint stores no model settings and its parameter layout does not determine the '
                   f'architecture: it fits preset(s) {fitting}, whose softmax temperature / causality cannot be '
                   'read off parameter shapes; name the preset')


def expected_shapes(model_kwargs: Mapping[str, Any], family: str = 'tapir') -> dict[str, dict[str, tuple[int, ...]]]:
  """Parameter shapes of the family's model built with `model_kwargs` (computed abstractly, no memory or FLOPs)."""
  return families.get(family).expected_shapes(model_kwargs)[0]


def check_params(params: Params, model_kwargs: Mapping[str, Any], state: Params | None = None,
                 family: str = 'tapir') -> None:
  """Raises ValueError listing missing, unexpected and mis-shaped parameters (and, for families whose layout
  includes it, Haiku state), with the settings the parameter shapes suggest."""
  fam = families.get(family)
  want_params, want_state = fam.expected_shapes(model_kwargs)
  trees = [('params ' if fam.checks_state else '', want_params, params)]
  if fam.checks_state:
    trees.append(('state ', want_state, state or {}))
  flat = lambda tree: {f'{m}/{n}': s for m, leaves in tree.items() for n, s in leaves.items()}
  show = lambda names: ', '.join(names[:8]) + (f', ... ({len(names)} in all)' if len(names) > 8 else '')
  lines = []
  for what, want, have in trees:
    want_flat, have_flat = flat(want), flat(_shape_tree(have))
    missing = sorted(set(want_flat) - set(have_flat))
    unexpected = sorted(set(have_flat) - set(want_flat))
    misshaped = sorted(k for k in set(want_flat) & set(have_flat) if want_flat[k] != have_flat[k])
    if missing:
      lines.append(f'  {what}missing: {show(missing)}')
    if unexpected:
      lines.append(f'  {what}unexpected: {show(unexpected)}')
    if misshaped:
      lines.append(f'  {what}mis-shaped: ' +
                   show([f'{k} {have_flat[k]} (model wants {want_flat[k]})' for k in misshaped]))
  if not lines:
    return
  settings = ', '.join(f'{k}={v!r}' for k, v in sorted(model_kwargs.items()))
  lines.insert(0, f'checkpoint does not fit {fam.module.__name__}({settings})')
  defaults = fam.defaults()
  seen = fam.settings_seen_in_shapes(params)
  hints = {k: v for k, v in seen.items() if normalize_settings(model_kwargs.get(k, defaults.get(k))) != v}
  if hints:
    lines.append('  the checkpoint looks like: ' + ', '.join(f'{k}={v!r}' for k, v in sorted(hints.items())))
  raise ValueError('\n'.join(lines))
