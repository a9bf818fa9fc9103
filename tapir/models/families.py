"""The model families, registered once: constructor, presets, parameter layout, and what shapes reveal.

    family = families.get('tapir')                    # or families.of_params(params), families.of_preset(name)
    family.presets['causal_tapir']                    # constructor settings of a released model
    family.expected_shapes(kwargs)                    # ({module: {name: shape}} params, ... state)

Every loader, tracker and trainer asks this table, so a new family (or a released model of an existing one) is
one entry here. A family is recognised from a parameter tree by the top-level module of its paths (`prefix`),
which is the released checkpoints' own naming.

The preset vocabulary is flat (`PRESETS`): preset names are unique across families, and the same names are the
model presets of the training configs (`configs/tapir.py:causal_tapir`, ...).
"""

import dataclasses
import functools
import inspect
import json
from typing import Any, Callable, Mapping

import haiku as hk
import jax
import jax.numpy as jnp

from tapir.models import refinement
from tapir.models import tapir as tapir_lib
from tapir.models import tapnet as tapnet_lib

Shapes = dict[str, dict[str, tuple[int, ...]]]  # {module_path: {name: shape}}


def normalize_settings(value: Any) -> Any:
  """Lists -> tuples (recursively), numpy scalars -> Python, so stored settings compare equal to configs."""
  if isinstance(value, (list, tuple)):
    return tuple(normalize_settings(v) for v in value)
  if isinstance(value, Mapping):
    return {k: normalize_settings(v) for k, v in value.items()}
  if hasattr(value, 'item') and getattr(value, 'shape', None) == ():
    return value.item()
  return value


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One family of models: how to build it, its released presets, and how to check a parameter tree."""
  name: str  # 'tapir' | 'tapnet'
  module: type  # the hk.Module class; constructor arguments are the family's settings
  prefix: str  # top-level module of every parameter path ('tapir' -> 'tapir/~/...')
  presets: Mapping[str, Mapping[str, Any]]  # preset name -> constructor settings
  # Settings that change how the same numbers are computed (memory, formulation, the pmap axis), not the model:
  # they never contradict a checkpoint's settings and are applied on top of them.
  execution_settings: frozenset[str]
  checks_state: bool  # whether Haiku state (batch-norm EMAs) is part of the layout check
  init_shapes: Callable[[Mapping[str, Any]], tuple[Any, Any]]  # kwargs -> abstract (params, state)
  # Settings a parameter tree shows (hints for a checkpoint that does not fit); {} when none are read.
  settings_seen_in_shapes: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda params: {}

  def defaults(self) -> dict[str, Any]:
    """The constructor's defaults."""
    signature = inspect.signature(self.module.__init__)
    return {k: normalize_settings(p.default) for k, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty and k != 'name'}

  def expected_shapes(self, model_kwargs: Mapping[str, Any]) -> tuple[Shapes, Shapes]:
    """(params, state) shapes of `module(**model_kwargs)`, computed abstractly (no memory or FLOPs)."""
    return _expected_shapes_cached(self.name, _freeze(model_kwargs))

  def owns(self, params: Mapping[str, Any]) -> bool:
    """Whether every module path of `params` belongs to this family."""
    return bool(params) and all(m == self.prefix or m.startswith(self.prefix + '/') for m in params)


def _tapir_init_shapes(model_kwargs):
  kwargs = {**model_kwargs, 'initial_resolution': (16, 16)}  # shapes do not depend on the resolution

  def forward(video, queries):
    return tapir_lib.TAPIR(**kwargs)(video, is_training=False, query_points=queries)

  return _abstract_init(forward)


def _tapnet_init_shapes(model_kwargs):
  kwargs = {**model_kwargs, 'cross_replica_axis': None}

  def forward(video, queries):  # training mode: the batch-norm EMAs are created by their first update
    return tapnet_lib.TAPNet(**kwargs)(video, is_training=True, query_points=queries)

  return _abstract_init(forward)


def _abstract_init(forward):
  video = jax.ShapeDtypeStruct((1, 2, 16, 16, 3), jnp.float32)
  queries = jax.ShapeDtypeStruct((1, 1, 3), jnp.float32)
  return jax.eval_shape(hk.transform_with_state(forward).init, jax.random.PRNGKey(0), video, queries)


def _tapir_settings_seen(params) -> dict[str, Any]:
  """The TAPIR settings parameter shapes show (temperature and causality never do)."""
  mixer = params.get('tapir/~/pips_mlp_mixer/linear')
  if mixer is None:
    return {}
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


FAMILIES: dict[str, ModelFamily] = {
    'tapir': ModelFamily(
        name='tapir', module=tapir_lib.TAPIR, prefix='tapir',
        presets={
            'tapir': dict(pyramid_level=0),
            'causal_tapir': dict(pyramid_level=1, use_causal_conv=True),
            'bootstapir': dict(pyramid_level=1, extra_convs=True, softmax_temperature=10.0),
            'causal_bootstapir': dict(pyramid_level=1, extra_convs=True, softmax_temperature=10.0,
                                      use_causal_conv=True),
        },
        execution_settings=frozenset({'remat_refinement', 'bilinear_interp_with_depthwise_conv',
                                      'cross_replica_axis', 'feature_extractor_chunk_size',
                                      'parallelize_query_extraction'}),
        checks_state=False, init_shapes=_tapir_init_shapes, settings_seen_in_shapes=_tapir_settings_seen),
    'tapnet': ModelFamily(
        name='tapnet', module=tapnet_lib.TAPNet, prefix='tap_net',
        presets={'tapnet': {}},
        execution_settings=frozenset({'cross_replica_axis', 'num_frames'}),  # num_frames: read by nothing
        checks_state=True, init_shapes=_tapnet_init_shapes),
}

# The flat preset vocabulary: preset name -> constructor settings (names are unique across families).
PRESETS: dict[str, dict[str, Any]] = {p: dict(s) for f in FAMILIES.values() for p, s in f.presets.items()}
assert len(PRESETS) == sum(len(f.presets) for f in FAMILIES.values()), 'preset names must be unique'


def get(name: str) -> ModelFamily:
  """The family called `name`; ValueError naming the known ones otherwise."""
  if name not in FAMILIES:
    raise ValueError(f'unknown model family {name!r}; known: {sorted(FAMILIES)}')
  return FAMILIES[name]


def of_preset(preset: str) -> ModelFamily:
  """The family a preset belongs to; ValueError naming every preset for an unknown one."""
  for family in FAMILIES.values():
    if preset in family.presets:
      return family
  raise ValueError(f'unknown preset {preset!r}; choose one of {sorted(PRESETS)}')


def name_of_params(params: Mapping[str, Any]) -> str | None:
  """The name of the family whose module paths `params` has, or None when none fits."""
  return next((f.name for f in FAMILIES.values() if f.owns(params)), None)


def of_params(params: Mapping[str, Any]) -> ModelFamily:
  """The family whose module paths `params` has; ValueError when none (or a mix) fits."""
  for family in FAMILIES.values():
    if family.owns(params):
      return family
  tops = sorted({m.split('/')[0] for m in params})
  raise ValueError(f'parameters of no known model family: their top-level modules are {tops}; expected one of '
                   f'{sorted(f.prefix for f in FAMILIES.values())}')


def _freeze(kwargs: Mapping[str, Any]) -> str:
  return json.dumps(normalize_settings(dict(kwargs)), sort_keys=True)


@functools.lru_cache(maxsize=64)
def _expected_shapes_cached(family: str, frozen: str) -> tuple[Shapes, Shapes]:
  params, state = FAMILIES[family].init_shapes(normalize_settings(json.loads(frozen)))
  shapes = lambda tree: {m: {n: tuple(v.shape) for n, v in leaves.items()} for m, leaves in tree.items()}
  return shapes(params), shapes(state)
