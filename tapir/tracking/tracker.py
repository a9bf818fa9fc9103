"""Tracking for people: uint8 video of any size in, tracks in that video's pixels and visibility out.

    tracker = tapir.Tracker.from_checkpoint('tapir_checkpoint_panning.npy', preset='tapir')
    queries = tapir.grid_query_points(video.shape[1:3], stride=32)          # [n, 3] (t, y, x)
    tracks, visible = tracker.track(video, queries)                         # [n, t, 2] (x, y), [n, t]

The video is resized (PIL Lanczos, as the reference demos do) to `resize_to` (by default the model's own
`initial_resolution`, 256x256 for the released models) before the model; queries and tracks are rescaled by
pure multiplication (`tapir.conventions`). Validation, resizing, the query-chunk loop and rescaling are the one
tracker core (`tapir.tracking.core`); this module gives it TAPIR's feature pass and heads.
"""

from typing import Any, Callable, Mapping

import haiku as hk
import jax
import jax.numpy as jnp

from tapir import checkpoint as checkpoint_lib
from tapir import conventions
from tapir.models import precision
from tapir.models import tapir as tapir_lib
from tapir.tracking import core
from tapir.tracking.core import MODEL_RESOLUTION, TrackerOutput  # pylint: disable=unused-import  (public)


def model_resolution(model_kwargs: Mapping[str, Any]) -> tuple[int, int]:
  """The (height, width) a TAPIR was built for: its `initial_resolution` (256x256 for the released models)."""
  return tuple(model_kwargs.get('initial_resolution', (256, 256)))


def init_params(model_kwargs: Mapping[str, Any], seed: int = 0):
  """Randomly initialised (params, state) of `tapir.TAPIR(**model_kwargs)`."""
  init_kwargs = {**model_kwargs, 'initial_resolution': (16, 16)}  # parameter shapes do not depend on it

  def forward(video, queries):
    return tapir_lib.TAPIR(**init_kwargs)(video, is_training=False, query_points=queries)

  init = jax.jit(hk.transform_with_state(forward).init)
  return init(jax.random.PRNGKey(seed), jnp.zeros((1, 2, 16, 16, 3)), jnp.zeros((1, 1, 3)))


def model_functions(model_kwargs: Mapping[str, Any], dtype: str = 'float32') -> tuple[Callable, Callable]:
  """The offline tracker's two model passes as Haiku apply functions (also what `tapir.export.jax_artifact`
  exports): features(params, state, rng, video [1, t, h, w, 3]) -> (FeatureGrids, state) and
  chunk(params, state, rng, video, grids, queries [1, c, 3]) -> ((tracks [1, c, t, 2], occlusion [1, c, t],
  expected_dist [1, c, t]), state); `dtype`: the compute precision (`tapir.models.precision`)."""

  def features(video):
    with precision.compute_dtype(dtype):
      return tapir_lib.TAPIR(**model_kwargs).get_feature_grids(video, is_training=False)

  def chunk(video, feature_grids, query_points):
    with precision.compute_dtype(dtype):
      model = tapir_lib.TAPIR(**model_kwargs)
      out = model(video, is_training=False, query_points=query_points, feature_grids=feature_grids)
    return out['tracks'], out['occlusion'], out['expected_dist']

  return hk.transform_with_state(features).apply, hk.transform_with_state(chunk).apply


class Tracker(core.ChunkedTracker):
  """Offline TAPIR for arbitrary uint8 videos. See the module docstring and `tapir.tracking.core`."""

  family = 'tapir'

  def __init__(self, params, state, model_kwargs: Mapping[str, Any], query_chunk_size: int = 64,
               dtype: str = 'float32'):
    """`dtype`: 'bfloat16' runs the convolutions and dense layers in bfloat16 (`tapir.models.precision`)."""
    super().__init__(params, state, model_kwargs, query_chunk_size, model_resolution(model_kwargs), dtype)

  def _build(self, model_kwargs):
    return model_functions(model_kwargs, self.dtype)

  def _visible(self, occlusion, expected_dist):
    return conventions.visibility_from_logits(occlusion, expected_dist)

  @classmethod
  def from_checkpoint(cls, path: str, preset: str | None = None, query_chunk_size: int = 64,
                      dtype: str = 'float32', **overrides) -> 'Tracker':
    """Loads a checkpoint of any format; the architecture follows `checkpoint.resolve_model_kwargs`.

    Settings stored in the file win (a contradicting `preset` is an error); a released checkpoint needs its
    `preset` (see `tapir.PRESETS`) unless its parameter layout determines it.
    """
    contents = checkpoint_lib.read_checkpoint(path)
    kwargs = checkpoint_lib.resolve_model_kwargs(contents.model_kwargs, preset, contents.params, overrides,
                                                 family=cls.family)
    return cls(contents.params, contents.state, kwargs, query_chunk_size, dtype)

  @classmethod
  def random_init(cls, preset: str = 'tapir', seed: int = 0, query_chunk_size: int = 64, dtype: str = 'float32',
                  **overrides) -> 'Tracker':
    """A tracker with randomly initialised weights (for trying the API and for tests)."""
    kwargs = checkpoint_lib.preset_kwargs(preset, **overrides)
    return cls(*init_params(kwargs, seed), kwargs, query_chunk_size, dtype)
