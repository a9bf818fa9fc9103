"""Our TAPIR checkpoints as the official PyTorch port's weights and constructor arguments, without torch.

  write_torch('model.safetensors', params, state, model_kwargs)
    model.safetensors  {torch key: array in the port's layout}; metadata: format 'pt', our settings as JSON
    model.json         tapir_kwargs (ours), torch_constructor (spelled as the port spells it, e.g.
                       `use_casual_conv`), torch_rebuilt_submodules, port_cannot_honour, state_dict counts
On the torch side (../shared/spec/torch_export.md §4):
    model = tapnet.torch.tapir_model.TAPIR(**meta['torch_constructor'])
    model.<name> = <recipe>  # each torch_rebuilt_submodules entry, with `from tapnet.torch import nets`
    model.load_state_dict(safetensors.torch.load_file('model.safetensors'), strict=True)

Names and layouts come from the one table in `tapir.checkpoint_torch` (read back by `read_checkpoint`). The port
builds only the released sizes (ResNet (2,2,2,2), a 512-wide 12-block mixer, 5 extra convs x4): other sizes are
still written, with a warning and, where the port has the class, the line that rebuilds the submodule.
Known disagreements of the port itself (spec §5), not of the weights: its `utils.bilinear` resizes without
antialiasing (jax.image.resize antialiases when it shrinks), and its `utils.map_coordinates_2d` divides x by the
grid height too, so on non-square grids refinement samples the wrong x: non-square videos, and videos resized down
to `initial_resolution`, track differently there (hundreds of pixels off when both bite).
"""

import json
import os
from typing import Any, Mapping
import warnings

import numpy as np
import safetensors.numpy

from tapir import checkpoint
from tapir import checkpoint_io
from tapir import checkpoint_torch
from tapir.models import refinement
from tapir.models import resnet

# The port's constructor arguments, in its order. Ours that it lacks (normalization, extra_convs_kwargs,
# cross_replica_axis, remat_refinement, name) have no effect there or are checked by `_unhonoured`.
PORT_ARGS = ('bilinear_interp_with_depthwise_conv', 'num_pips_iter', 'pyramid_level', 'mixer_hidden_dim',
             'num_mixer_blocks', 'mixer_kernel_shape', 'patch_size', 'softmax_temperature',
             'parallelize_query_extraction', 'initial_resolution', 'blocks_per_group',
             'feature_extractor_chunk_size', 'extra_convs', 'use_casual_conv')
# What the port builds whatever it is told (it accepts these arguments and ignores them).
PORT_BUILDS = dict(blocks_per_group=(2, 2, 2, 2), mixer_hidden_dim=512, num_mixer_blocks=12, mixer_kernel_shape=3,
                   patch_size=7)


def _unhonoured(s: Mapping[str, Any]) -> dict[str, str]:
  """{setting: why} for the settings `s` (defaults filled in) the port cannot build."""
  out = {}
  if s['blocks_per_group'] != PORT_BUILDS['blocks_per_group']:
    out['blocks_per_group'] = (f'{s["blocks_per_group"]}: the port always builds (2, 2, 2, 2); replace '
                               'model.resnet_torch as torch_rebuilt_submodules says')
  for key in ('mixer_hidden_dim', 'num_mixer_blocks', 'mixer_kernel_shape'):
    if s[key] != PORT_BUILDS[key]:
      out[key] = (f'{s[key]!r}: the port always builds {key}={PORT_BUILDS[key]}; replace model.torch_pips_mixer '
                  'as torch_rebuilt_submodules says')
  if s['patch_size'] != PORT_BUILDS['patch_size']:
    out['patch_size'] = f'{s["patch_size"]!r}: 7x7 patches are hard-coded in the port'
  extra = {**checkpoint_torch.EXTRA_CONVS_DEFAULTS, **(s['extra_convs_kwargs'] or {})}
  if s['extra_convs'] and extra != checkpoint_torch.EXTRA_CONVS_DEFAULTS:
    out['extra_convs_kwargs'] = (f'{s["extra_convs_kwargs"]!r}: the port\'s extra convs are fixed at 5 layers, '
                                 'x4 channels, no temporal shift; it has no class to rebuild them with')
  if s['normalization'] != 'instancenorm':
    out['normalization'] = f'{s["normalization"]!r}: the port\'s ResNet uses InstanceNorm2d(affine) only'
  return out


def port_constructor_args(model_kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """(the port's constructor arguments, JSON-ready, in its spelling and order; our settings it cannot honour).

  Every argument is passed explicitly: several of the port's defaults differ from TAPIR's (spec §4:
  `extra_convs=True`, `feature_extractor_chunk_size=10`, `pyramid_level=1` also for the BootsTAPIR colab).
  """
  s = checkpoint_torch.tapir_settings(model_kwargs)
  args = {key: s[key] for key in PORT_ARGS if key in s}
  args['bilinear_interp_with_depthwise_conv'] = bool(s['bilinear_interp_with_depthwise_conv'])  # None: ours picks
  args['softmax_temperature'] = float(s['softmax_temperature'])
  args['feature_extractor_chunk_size'] = s['feature_extractor_chunk_size'] or 0  # the port: 0 = one pass
  args['extra_convs'] = bool(s['extra_convs'])
  args['use_casual_conv'] = bool(s['use_causal_conv'])  # (sic)
  args = json.loads(json.dumps({key: args[key] for key in PORT_ARGS}))  # tuples -> lists, as the port's JSON
  return args, list(_unhonoured(s))


def rebuilt_submodules(model_kwargs: Mapping[str, Any]) -> dict[str, str]:
  """{port attribute: `nets` expression that builds it at our sizes} for the submodules the port builds wrong."""
  s = checkpoint_torch.tapir_settings(model_kwargs)
  out = {}
  if s['blocks_per_group'] != PORT_BUILDS['blocks_per_group']:
    out['resnet_torch'] = 'nets.ResNet(**{!r})'.format(dict(
        blocks_per_group=tuple(s['blocks_per_group']), channels_per_group=tuple(resnet.CHANNELS_PER_GROUP),
        use_projection=(True,) * len(s['blocks_per_group']), strides=tuple(resnet.STRIDES)))
  if any(s[k] != PORT_BUILDS[k] for k in ('mixer_hidden_dim', 'num_mixer_blocks', 'mixer_kernel_shape')):
    out['torch_pips_mixer'] = 'nets.PIPSMLPMixer(**{!r})'.format(dict(
        input_channels=refinement.mixer_input_width(s['pyramid_level']), output_channels=refinement.OUTPUT_CHANNELS,
        hidden_dim=s['mixer_hidden_dim'], num_blocks=s['num_mixer_blocks'], kernel_shape=s['mixer_kernel_shape'],
        use_causal_conv=bool(s['use_causal_conv'])))
  return out


def _export(params, state, model_kwargs) -> tuple[dict[str, np.ndarray], list[str]]:
  s = checkpoint_torch.tapir_settings(model_kwargs)
  if s['normalization'] != 'instancenorm':
    raise ValueError(f'normalization={s["normalization"]!r} has no counterpart in the PyTorch port, whose ResNet '
                     "uses instance norm: only 'instancenorm' checkpoints can be exported")
  prefix = s['name'] + '/~/'
  used = {m: leaves for m, leaves in params.items() if m.removeprefix(prefix) not in checkpoint_torch.UNUSED_MODULES}
  checkpoint.check_params(used, model_kwargs)  # the settings we write must describe these arrays
  torch_views, dropped = checkpoint_torch.haiku_to_torch(params, state, s['name'])
  # Contiguous copies: safetensors writes raw buffers.
  return {key: np.ascontiguousarray(value) for key, value in torch_views.items()}, dropped


def to_torch_state_dict(params: Mapping[str, Mapping[str, Any]], state: Mapping[str, Any] | None,
                        model_kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{torch key: array in the port's layout}, dtypes kept, of a checkpoint of `tapir.TAPIR(**model_kwargs)`.

  Args:
    params: {module_path: {name: array}}, as `tapir.checkpoint.read_checkpoint` gives it.
    state: Haiku state; must be empty (the port keeps none: ValueError otherwise).
    model_kwargs: the TAPIR settings the params were made with (checked against their shapes).
  """
  return _export(params, state, model_kwargs)[0]


def write_torch(path: str | os.PathLike, params: Mapping[str, Mapping[str, Any]], state: Mapping[str, Any] | None,
                model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """Writes `path` (.safetensors) and `<path minus suffix>.json`, each atomically; returns the JSON's content.

  Settings the port cannot honour (`port_constructor_args`) are written anyway, with a warning, and listed under
  `port_cannot_honour` in the JSON.
  """
  path = os.fspath(path)
  json_path = os.path.splitext(path)[0] + '.json'
  if json_path == path:
    raise ValueError(f'{path}: the weights need another suffix (.safetensors): the settings go to {json_path}')
  state_dict, dropped = _export(params, state, model_kwargs)
  constructor, _ = port_constructor_args(model_kwargs)
  why = _unhonoured(checkpoint_torch.tapir_settings(model_kwargs))
  if why:
    warnings.warn(f'{path}: the PyTorch port cannot honour ' + '; '.join(f'{k}={v}' for k, v in why.items()) +
                  f'. The arrays are written anyway; {json_path} says how to build the port to load them.',
                  stacklevel=2)
  try:
    ours = json.loads(json.dumps(checkpoint_torch.plain_settings(dict(model_kwargs))))
  except TypeError as e:
    raise ValueError(f'model_kwargs must be JSON-serialisable: {e}') from e
  meta = dict(
      tapir_kwargs=ours, torch_constructor=constructor, torch_rebuilt_submodules=rebuilt_submodules(model_kwargs),
      port_cannot_honour=why,
      torch_call=('model = tapnet.torch.tapir_model.TAPIR(**torch_constructor); replace torch_rebuilt_submodules '
                  '(from tapnet.torch import nets); model.load_state_dict(safetensors.torch.load_file(weights), '
                  'strict=True)'),
      state_dict=dict(num_keys=len(state_dict), num_parameters=int(sum(v.size for v in state_dict.values())),
                      dtype=','.join(sorted({str(v.dtype) for v in state_dict.values()})),
                      dropped_haiku_params=dropped))
  encoded = safetensors.numpy.save(state_dict, metadata={'format': 'pt',  # what HF loaders expect of torch weights
                                                         checkpoint_torch.SETTINGS_KEY: json.dumps(ours)})
  checkpoint_io.write_atomically(path, lambda f: f.write(encoded))
  checkpoint_io.write_atomically(json_path, lambda f: f.write(json.dumps(meta, indent=1).encode('utf-8')))
  return meta
