"""The one loader: a checkpoint (or random weights) and a preset in, the right tracker out, for every family.

    tracker = tapir.load_tracker('tapir_checkpoint_panning.npy', preset='tapir')           # tapir.Tracker
    tracker = tapir.load_tracker('causal_tapir_checkpoint.npy', preset='causal_tapir', online=True)
    tracker = tapir.load_tracker('tapnet_checkpoint.npy')                                   # tapir.TAPNetTracker
    tracker = tapir.load_tracker(preset='tapir', random_weights=True)                       # for tests

The model family comes from the checkpoint (stored, or read off its module paths) or from the preset; the
architecture from the one rule (`tapir.checkpoint.resolve_model_kwargs`). The command line, the evaluation
runner, the quickstart and the training evaluator all load through here; errors name the arguments.
"""

from typing import Any, Callable, Mapping, NamedTuple, Sequence

from absl import logging

from tapir import checkpoint as checkpoint_lib
from tapir.models import families
from tapir.tracking import core
from tapir.tracking import online as online_lib
from tapir.tracking import tapnet as tapnet_tracking
from tapir.tracking import tracker as tracker_lib

AnyTracker = tracker_lib.Tracker | online_lib.OnlineTracker | tapnet_tracking.TAPNetTracker

# The released file of each preset (`scripts/download_checkpoints.sh`), named in error messages.
RELEASED_CHECKPOINTS = {
    'tapir': 'tapir_checkpoint_panning.npy',
    'bootstapir': 'bootstapir_checkpoint_v2.npy',
    'causal_tapir': 'causal_tapir_checkpoint.npy',
    'causal_bootstapir': 'causal_bootstapir_checkpoint.npy',
    'tapnet': 'tapnet_checkpoint.npy',
}
NEED_WEIGHTS = ('tracking needs trained weights: give checkpoint, the path of a released .npy (download them with '
                '`bash scripts/download_checkpoints.sh checkpoints`: ' +
                ', '.join(f'{f} for preset {p}' for p, f in RELEASED_CHECKPOINTS.items()) +
                ') or of one of ours; random_weights=True runs untrained weights, for testing only.')


class FamilyTrackers(NamedTuple):
  """The trackers of one model family (`tapir.models.families`)."""
  offline: type  # (params, state, model_kwargs, query_chunk_size) -> tracker
  online: type | None  # (params, state, model_kwargs, resize_to) -> tracker; None: offline only
  init_params: Callable[..., tuple[Any, Any]]  # (model_kwargs, seed) -> random (params, state)


TRACKERS: dict[str, FamilyTrackers] = {
    'tapir': FamilyTrackers(tracker_lib.Tracker, online_lib.OnlineTracker, tracker_lib.init_params),
    'tapnet': FamilyTrackers(tapnet_tracking.TAPNetTracker, None, tapnet_tracking.init_params),
}


class LoadedModel(NamedTuple):
  params: dict  # {module_path: {name: array}}
  state: dict  # Haiku state
  family: str  # 'tapir' | 'tapnet'
  model_kwargs: dict[str, Any]  # constructor settings, by the architecture rule
  checkpoint: str | None  # the file read; None for random weights
  preset: str | None  # the preset asked for (None: none)


def load_weights(checkpoint: str | None = None, preset: str | None = None, *, random_weights: bool = False,
                 seed: int = 0, **overrides) -> LoadedModel:
  """One read of `checkpoint` (any format `tapir.checkpoint` reads), or random weights of `preset`.

  Args:
    checkpoint: path of the weights; None with `random_weights` for untrained weights.
    preset: a `tapir.PRESETS` name; needed for a released checkpoint whose layout does not determine it.
    random_weights: without `checkpoint`, initialise `preset` (default 'tapir') randomly from `seed`.
    overrides: constructor settings on top of the preset (must agree with settings stored in the file).
  """
  if checkpoint is None:
    if not random_weights:
      raise ValueError(NEED_WEIGHTS)
    logging.warning('RANDOM weights: the tracks are meaningless (for testing only)')
    preset = preset or 'tapir'
    kwargs = checkpoint_lib.resolve_model_kwargs(None, preset, overrides=overrides)
    family = families.of_preset(preset).name
    return LoadedModel(*TRACKERS[family].init_params(kwargs, seed), family, kwargs, None, preset)
  if random_weights:
    raise ValueError(f'give checkpoint or random_weights=True, not both (checkpoint={checkpoint!r})')
  contents = checkpoint_lib.read_checkpoint(checkpoint)  # FileNotFoundError naming the path
  kwargs = checkpoint_lib.resolve_model_kwargs(contents.model_kwargs, preset, contents.params, overrides,
                                               family=contents.family)
  family = contents.family or families.of_preset(preset or 'tapir').name
  return LoadedModel(contents.params, contents.state, family, kwargs, checkpoint, preset)


def make_tracker(model: LoadedModel, online: bool = False,
                 resize_to: Sequence[int] | str | None = core.MODEL_RESOLUTION,
                 query_chunk_size: int | None = None, dtype: str = 'float32') -> AnyTracker:
  """The tracker for loaded weights: offline, or with `online` the streaming one (causal TAPIR only).

  `resize_to` is the online tracker's frame size (the offline ones take it per call); `query_chunk_size` None
  keeps the tracker's default; `dtype` is the compute precision ('float32' or 'bfloat16', see
  `tapir.models.precision`). Raises ValueError when `online` is asked of a model that cannot stream, and with
  the layout diagnosis (naming the preset's released file) when the weights do not fit the architecture.
  """
  trackers = TRACKERS[model.family]
  if online and (trackers.online is None or not model.model_kwargs.get('use_causal_conv')):
    raise ValueError(f'online=True needs a causal TAPIR (preset causal_tapir or causal_bootstapir); this is a '
                     f'{model.family} model' + (f' of preset {model.preset!r}' if model.preset else '') +
                     ' without causal convolutions')
  chunk = {} if query_chunk_size is None else dict(query_chunk_size=query_chunk_size)
  try:
    if online:
      return trackers.online(model.params, model.state, model.model_kwargs, resize_to=resize_to, dtype=dtype,
                             **chunk)
    return trackers.offline(model.params, model.state, model.model_kwargs, dtype=dtype, **chunk)
  except ValueError as e:
    if model.checkpoint is None or model.preset is None or not str(e).startswith('checkpoint does not fit'):
      raise
    expected = RELEASED_CHECKPOINTS.get(model.preset, '?')
    raise ValueError(f'checkpoint {model.checkpoint} does not fit preset {model.preset!r} (whose released '
                     f'checkpoint is {expected}); is it a checkpoint for another preset?\n{e}') from e


def load_tracker(checkpoint: str | None = None, preset: str | None = None, online: bool = False, *,
                 resize_to: Sequence[int] | str | None = core.MODEL_RESOLUTION, query_chunk_size: int | None = None,
                 random_weights: bool = False, seed: int = 0, dtype: str = 'float32', **overrides) -> AnyTracker:
  """`make_tracker(load_weights(...))`: a `tapir.Tracker`, `tapir.OnlineTracker` or `tapir.TAPNetTracker`.

  A checkpoint written by our trainer carries its family and architecture, which then replace the preset's.
  """
  model = load_weights(checkpoint, preset, random_weights=random_weights, seed=seed, **overrides)
  return make_tracker(model, online, resize_to, query_chunk_size, dtype)


def describe(model: LoadedModel) -> Mapping[str, str]:
  """The settings a tracks file records: preset (the one asked for, else the one the settings match), source."""
  preset = model.preset or checkpoint_lib.preset_of(model.model_kwargs, model.family) or 'custom'
  return dict(preset=preset, checkpoint=model.checkpoint or 'random')
