"""Streaming (online) tracking with the causal model: one frame in, that frame's tracks out.

    tracker = tapir.OnlineTracker.from_checkpoint('causal_tapir_checkpoint.npy', preset='causal_tapir')
    tracker.start(first_frame, query_points_yx)       # [n, 2] (y, x) in the frame's pixels
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
import numpy as np

from tapir import checkpoint as checkpoint_lib
from tapir import conventions
from tapir.tracking import core
from tapir.tracking import queries as queries_lib
from tapir.tracking import tracker as tracker_lib
from tapir.models import causal
from tapir.models import tapir as tapir_lib


class OnlineOutput(NamedTuple):
  tracks: np.ndarray  # [n, 2] (x, y) pixels of the frame given to `step`
  visible: np.ndarray  # [n] bool
  occlusion: np.ndarray  # [n] logit
  expected_dist: np.ndarray  # [n] logit


class OnlineTracker:
  """Frame-by-frame tracker over a causal TAPIR. See the module docstring."""

  def __init__(self, params, state, model_kwargs: Mapping[str, Any],
               resize_to: Sequence[int] | str | None = core.MODEL_RESOLUTION, query_chunk_size: int = 64):
    """`resize_to`: the (height, width) frames are resized to; 'model' (default) for the model's own
    `initial_resolution` (256x256 for the released models); None for the frames' own size."""
    self.model_kwargs = dict(model_kwargs)
    query_chunk_size = queries_lib.check_positive_int(query_chunk_size, 'query_chunk_size')
    self.resize_to = core.resolve_resize_to(resize_to, tracker_lib.model_resolution(self.model_kwargs))
    if not self.model_kwargs.get('use_causal_conv'):
      raise ValueError('online tracking needs a causal model (use_causal_conv=True, e.g. preset="causal_tapir")')
    checkpoint_lib.check_params(params, self.model_kwargs)
    self.params, self.state = jax.device_put(params), jax.device_put(state)
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
    self._features = None  # QueryFeatures of the current points (None: no points)
    self._context = None  # causal.CausalState of the current points
    self._frame_hw = None  # (h, w) of the stream's frames, set by `start`
    self.frames_seen = 0

  @classmethod
  def from_checkpoint(cls, path: str, preset: str | None = None, resize_to=core.MODEL_RESOLUTION,
                      **overrides):
    """Loads a checkpoint of either format; the architecture follows `checkpoint.resolve_model_kwargs` (a
    released causal checkpoint needs its preset: causality cannot be read off parameter shapes)."""
    contents = checkpoint_lib.read_checkpoint(path)
    kwargs = checkpoint_lib.resolve_model_kwargs(contents.model_kwargs, preset, contents.params, overrides,
                                                 family='tapir')
    return cls(contents.params, contents.state, kwargs, resize_to)

  @classmethod
  def random_init(cls, preset: str = 'causal_tapir', seed: int = 0, resize_to=core.MODEL_RESOLUTION,
                  **overrides):
    kwargs = checkpoint_lib.preset_kwargs(preset, **overrides)
    return cls(*tracker_lib.init_params(kwargs, seed), kwargs, resize_to)

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
    if min(hw) < 1:
      raise ValueError(f'frame must have at least one row and column; got shape {frame.shape}')
    if self._frame_hw is not None and tuple(hw) != self._frame_hw:
      raise ValueError(f'frame is {hw[0]}x{hw[1]} (height x width) but this stream started with '
                       f'{self._frame_hw[0]}x{self._frame_hw[1]} frames: every frame of a stream must have the same '
                       'size (call start() to begin a new stream)')
    if self.resize_to is not None and tuple(hw) != self.resize_to:
      import mediapy  # pylint: disable=g-import-not-at-top  (lazy: it imports matplotlib)
      frame = np.asarray(mediapy.resize_image(frame, self.resize_to))
    return jnp.asarray(conventions.frames_to_model_input(frame)[None, None]), hw

  def _features_for(self, frame: np.ndarray, query_points_yx: np.ndarray):
    model_frame, (h, w) = self._prepare(frame)
    query_points_yx = np.asarray(query_points_yx, np.float32)
    if query_points_yx.ndim != 2 or query_points_yx.shape[-1] != 2:
      raise ValueError(f'query_points_yx must be [num_points, 2] as (y, x); got shape {query_points_yx.shape}')
    queries = np.concatenate([np.zeros_like(query_points_yx[:, :1]), query_points_yx], axis=-1)
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

  def start(self, frame: np.ndarray, query_points_yx: np.ndarray) -> None:
    """Starts a stream of frames the size of `frame` (uint8 [h, w, 3]), tracking `query_points_yx` [n, 2] (y, x)
    given in its pixels (n may be 0: add points later with `add_queries`)."""
    self._frame_hw = None
    self._features = self._context = None
    query_points_yx = _check_points(query_points_yx)
    if not len(query_points_yx):
      self._prepare(frame)  # validates the frame
      self._frame_hw = tuple(frame.shape[:2])
    else:
      self._features, model_hw = self._features_for(frame, query_points_yx)
      self._frame_hw = tuple(frame.shape[:2])
      self._context = self._zero_context(self.num_points, model_hw)
    self.frames_seen = 0

  def add_queries(self, frame: np.ndarray, query_points_yx: np.ndarray) -> np.ndarray:
    """Adds points starting at `frame` (call before `step(frame)`). Returns their indices (empty for n = 0)."""
    query_points_yx = _check_points(query_points_yx)
    if self._frame_hw is None:
      self.start(frame, query_points_yx)
      return np.arange(self.num_points)
    if not len(query_points_yx):
      self._prepare(frame)
      return np.zeros([0], np.int64)
    if self._features is None:
      first_points = self._features_for(frame, query_points_yx)
      self._features, self._context = first_points[0], self._zero_context(len(query_points_yx), first_points[1])
      return np.arange(self.num_points)
    features, model_hw = self._features_for(frame, query_points_yx)
    first = self.num_points
    self._features = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=1), self._features,
                                            features)
    fresh = self._zero_context(len(query_points_yx), model_hw)
    self._context = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=1), self._context, fresh)
    return np.arange(first, self.num_points)

  def replace_queries(self, frame: np.ndarray, query_points_yx: np.ndarray, indices: Sequence[int]) -> None:
    """Replaces the points at `indices` by new ones starting at `frame`; their history restarts from zero.

    `indices`: distinct integers in [0, num_points), one per row of `query_points_yx` [n, 2] (y, x); n = 0 does
    nothing.
    """
    query_points_yx = _check_points(query_points_yx)
    indices = np.asarray(indices)
    if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
      raise ValueError(f'indices must be a 1-D sequence of integers in [0, {self.num_points}); got '
                       f'{indices.tolist()} ({indices.dtype})')
    if len(indices) != len(query_points_yx):
      raise ValueError(f'need one index per new query point: {len(indices)} indices for {len(query_points_yx)} points')
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_points):
      raise ValueError(f'indices must lie in [0, {self.num_points}) (the current points); got {indices.tolist()}')
    if len(np.unique(indices)) != len(indices):
      raise ValueError(f'indices must be distinct; got {indices.tolist()}')
    if not indices.size:
      if self._frame_hw is not None:
        self._prepare(frame)
      return
    features, _ = self._features_for(frame, query_points_yx)
    self._features, self._context = tapir_lib.TAPIR.update_query_features(self._features, features,
                                                                          jnp.asarray(indices), self._context)

  def step(self, frame: np.ndarray) -> OnlineOutput:
    """Tracks the current points into `frame` (uint8 [h, w, 3]); returns positions in its pixels."""
    if self._frame_hw is None:
      raise ValueError('call start(frame, query_points_yx) before step()')
    model_frame, (h, w) = self._prepare(frame)
    if self._features is None:  # no points yet
      self.frames_seen += 1
      empty = np.zeros([0], np.float32)
      return OnlineOutput(tracks=np.zeros([0, 2], np.float32), visible=np.zeros([0], bool), occlusion=empty,
                          expected_dist=empty.copy())
    (tracks, occ, expd, self._context), _ = self._step(self.params, self.state, None, model_frame, self._features,
                                                       self._context)
    self.frames_seen += 1
    tracks, occ, expd = jax.device_get((tracks[0, :, 0], occ[0, :, 0], expd[0, :, 0]))
    model_h, model_w = model_frame.shape[2:4]
    tracks = conventions.convert_grid_coordinates(tracks, (model_w, model_h), (w, h))
    return OnlineOutput(tracks=tracks, visible=conventions.visibility_from_logits(occ, expd), occlusion=occ,
                        expected_dist=expd)


def _check_points(query_points_yx: Any) -> np.ndarray:  # [n, 2] float32 (y, x)
  query_points_yx = np.asarray(query_points_yx, np.float32)
  if query_points_yx.size == 0:
    query_points_yx = query_points_yx.reshape(0, 2)
  if query_points_yx.ndim != 2 or query_points_yx.shape[-1] != 2:
    raise ValueError(f'query_points_yx must be [num_points, 2] as (y, x); got shape {query_points_yx.shape}')
  return query_points_yx
