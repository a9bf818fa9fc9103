"""Streaming (online) tracking with the causal model: one frame in, that frame's tracks out.

    tracker = tapir.OnlineTracker.from_checkpoint('causal_tapir_checkpoint.npy', preset='causal_tapir')
    tracker.start(first_frame, query_points)       # [n, 2] (y, x) in the frame's pixels
    for frame in stream:
      out = tracker.step(frame)                   # out.tracks [n, 2] (x, y), out.visible [n]

Queries are defined on the frame they start at; their history is the causal context (`tapir.models.causal`):
the last two frames of two signals per mixer block and refinement iteration, so memory and time per step stay
constant however long the stream. Points can be added or replaced mid-stream; their history restarts from zero.
Each step runs the released online protocol: features of the new frame only, no query-frame replacement, and the
outputs of the last refinement iteration.
"""

from typing import Any, Mapping, NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import mediapy
import numpy as np

from tapir import checkpoint as checkpoint_lib
from tapir import conventions
from tapir import inference
from tapir.models import causal
from tapir.models import tapir as tapir_lib


class OnlineOutput(NamedTuple):
  tracks: np.ndarray  # [n, 2] (x, y) pixels of the frame given to `step`
  visible: np.ndarray  # [n] bool
  occlusion: np.ndarray  # [n] logit
  expected_dist: np.ndarray  # [n] logit


class OnlineTracker:
  """Frame-by-frame tracker over a causal TAPIR. See the module docstring."""

  def __init__(self, params, state, model_kwargs: Mapping[str, Any], resize_to: Sequence[int] | None = (256, 256),
               query_chunk_size: int = 64):
    self.model_kwargs = dict(model_kwargs)
    if not self.model_kwargs.get('use_causal_conv'):
      raise ValueError('online tracking needs a causal model (use_causal_conv=True, e.g. preset="causal_tapir")')
    checkpoint_lib.check_params(params, self.model_kwargs)
    self.params, self.state = jax.device_put(params), jax.device_put(state)
    self.resize_to = None if resize_to is None else tuple(resize_to)
    kwargs = self.model_kwargs

    def query_features(frame, query_points):
      model = tapir_lib.TAPIR(**kwargs)
      return model.get_query_features(frame, False, query_points)

    def step(frame, features, context):
      model = tapir_lib.TAPIR(**kwargs)
      grids = model.get_feature_grids(frame, False)
      out = model.estimate_trajectories(frame.shape[2:4], False, grids, features, None, query_chunk_size,
                                        causal_context=context, get_causal_context=True)
      return out['tracks'][-1], out['occlusion'][-1], out['expected_dist'][-1], out['causal_context']

    self._query_features = jax.jit(hk.transform_with_state(query_features).apply)
    self._step = jax.jit(hk.transform_with_state(step).apply)
    self._features = None  # QueryFeatures of the current points
    self._context = None  # causal.CausalState of the current points
    self.frames_seen = 0

  @classmethod
  def from_checkpoint(cls, path: str, preset: str = 'causal_tapir', resize_to=(256, 256), **overrides):
    params, state = checkpoint_lib.load_checkpoint(path)
    return cls(params, state, inference.preset_kwargs(preset, **overrides), resize_to)

  @classmethod
  def random_init(cls, preset: str = 'causal_tapir', seed: int = 0, resize_to=(256, 256), **overrides):
    kwargs = inference.preset_kwargs(preset, **overrides)
    return cls(*inference.init_params(kwargs, seed), kwargs, resize_to)

  @property
  def num_points(self) -> int:
    return 0 if self._features is None else int(self._features.lowres[0].shape[1])

  @property
  def context(self) -> causal.CausalState | None:
    """The causal state of the current points (fixed size: independent of the frames seen)."""
    return self._context

  def _prepare(self, frame: np.ndarray) -> tuple[jax.Array, tuple[int, int]]:
    """uint8 [h, w, 3] -> model input [1, 1, h', w', 3] and the frame's (h, w)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
      raise ValueError(f'frame must be uint8 [height, width, 3]; got {getattr(frame, "dtype", type(frame))} '
                       f'{getattr(frame, "shape", "")}')
    hw = frame.shape[:2]
    if self.resize_to is not None and tuple(hw) != self.resize_to:
      frame = np.asarray(mediapy.resize_image(frame, self.resize_to))
    return jnp.asarray(conventions.frames_to_model_input(frame)[None, None]), hw

  def _features_for(self, frame: np.ndarray, query_points: np.ndarray):
    model_frame, (h, w) = self._prepare(frame)
    query_points = np.asarray(query_points, np.float32)
    if query_points.ndim != 2 or query_points.shape[-1] != 2:
      raise ValueError(f'query_points must be [num_points, 2] as (y, x); got shape {query_points.shape}')
    queries = np.concatenate([np.zeros_like(query_points[:, :1]), query_points], axis=-1)
    tapir_lib.check_query_points(queries, (1, h, w, 3))
    queries = conventions.convert_grid_coordinates(queries, (1, h, w), (1,) + model_frame.shape[2:4])
    features, _ = self._query_features(self.params, self.state, None, model_frame, jnp.asarray(queries[None]))
    return features, model_frame.shape[2:4]

  def _zero_context(self, num_points: int, model_hw) -> causal.CausalState:
    levels = len(tapir_lib.generate_default_resolutions(model_hw, self.model_kwargs.get('initial_resolution',
                                                                                         (256, 256))))
    return causal.zero_state(1, num_points, self.model_kwargs.get('mixer_hidden_dim', 512),
                             self.model_kwargs.get('num_mixer_blocks', 12),
                             self.model_kwargs.get('num_pips_iter', 4), levels)

  def start(self, frame: np.ndarray, query_points: np.ndarray) -> None:
    """Starts tracking `query_points` [n, 2] (y, x), given in pixels of `frame` (uint8 [h, w, 3])."""
    self._features, model_hw = self._features_for(frame, query_points)
    self._context = self._zero_context(self.num_points, model_hw)
    self.frames_seen = 0

  def add_queries(self, frame: np.ndarray, query_points: np.ndarray) -> np.ndarray:
    """Adds points starting at `frame` (call before `step(frame)`). Returns their indices."""
    if self._features is None:
      self.start(frame, query_points)
      return np.arange(self.num_points)
    features, model_hw = self._features_for(frame, query_points)
    first = self.num_points
    self._features = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=1), self._features,
                                            features)
    fresh = self._zero_context(len(query_points), model_hw)
    self._context = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=1), self._context, fresh)
    return np.arange(first, self.num_points)

  def replace_queries(self, frame: np.ndarray, query_points: np.ndarray, indices: Sequence[int]) -> None:
    """Replaces the points at `indices` by new ones starting at `frame`; their history restarts from zero."""
    indices = np.asarray(indices)
    if len(indices) != len(query_points) or indices.min() < 0 or indices.max() >= self.num_points:
      raise ValueError(f'need one index in [0, {self.num_points}) per new query point; got {indices.tolist()}')
    features, _ = self._features_for(frame, query_points)
    self._features, self._context = tapir_lib.TAPIR.update_query_features(self._features, features,
                                                                          jnp.asarray(indices), self._context)

  def step(self, frame: np.ndarray) -> OnlineOutput:
    """Tracks the current points into `frame` (uint8 [h, w, 3]); returns positions in its pixels."""
    if self._features is None:
      raise ValueError('call start(frame, query_points) before step()')
    model_frame, (h, w) = self._prepare(frame)
    (tracks, occ, expd, self._context), _ = self._step(self.params, self.state, None, model_frame, self._features,
                                                       self._context)
    self.frames_seen += 1
    tracks, occ, expd = jax.device_get((tracks[0, :, 0], occ[0, :, 0], expd[0, :, 0]))
    model_h, model_w = model_frame.shape[2:4]
    tracks = conventions.convert_grid_coordinates(tracks, (model_w, model_h), (w, h))
    return OnlineOutput(tracks=tracks, visible=conventions.visibility_from_logits(occ, expd), occlusion=occ,
                        expected_dist=expd)
