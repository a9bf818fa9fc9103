"""The one offline tracker core: validation, resizing, padding, the query-chunk loop and rescaling.

`tapir.Tracker` (TAPIR) and `tapir.TAPNetTracker` (TAP-Net) are this core with two model-specific pieces: the
jitted feature pass and the jitted per-chunk heads (`_build`), and how logits become visibility (`_visible`).

    out = tracker.predict(video, query_points)                       # video uint8 [t, h, w, 3], queries [n, 3]
    out = tracker.predict(resized, query_points, source_hw=(h, w))   # frames already at the model's input size

Queries are checked once per call; the video goes to `resize_to` (PIL Lanczos, as the reference demos do);
features are computed once per video and the queries run `query_chunk_size` at a time (the last chunk padded
with repeats, so each video shape compiles once); tracks are mapped back by pure multiplication
(`tapir.conventions`). Weights are arguments of the jitted functions: `set_weights` swaps them without a
recompilation (the training evaluator keeps one tracker per run).
"""

import abc
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from tapir import checkpoint as checkpoint_lib
from tapir import conventions
from tapir.models import precision
from tapir.models import shapes
from tapir.tracking.queries import check_positive_int
from tapir.video import check_video, resize_video

MODEL_RESOLUTION = 'model'  # `resize_to` default: the model's own resolution (`Tracker.resolution`)


class TrackerOutput(NamedTuple):
  tracks: np.ndarray  # [n, t, 2] (x, y) pixels of the input video
  visible: np.ndarray  # [n, t] bool
  occlusion: np.ndarray  # [n, t] logit
  expected_dist: np.ndarray | None  # [n, t] logit; None for models without the head (TAP-Net)


def check_hw(value: Any, name: str) -> tuple[int, int]:
  """`value` as (height, width) of two integers >= 1, else ValueError naming `name`."""
  try:
    hw = tuple(value)
  except TypeError:
    hw = ()
  if len(hw) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in hw):
    raise ValueError(f'{name} must be (height, width) with both integers >= 1; got {value!r}' +
                     (" (or 'model', or None)" if name == 'resize_to' else ''))
  return int(hw[0]), int(hw[1])


def resolve_resize_to(resize_to: Any, model_hw: tuple[int, int]) -> tuple[int, int] | None:
  """'model' -> `model_hw`; None -> None (the video's own size); else a validated (height, width)."""
  if isinstance(resize_to, str):
    if resize_to != MODEL_RESOLUTION:
      raise ValueError(f"resize_to must be 'model', None or (height, width); got {resize_to!r}")
    return model_hw
  if resize_to is None:
    return None
  return check_hw(resize_to, 'resize_to')


def check_queries(query_points: Any, video_shape: Sequence[int]) -> np.ndarray:  # -> [n, 3] float32 (t, y, x)
  """Query points as float32 [n, 3] (t, y, x) inside a video of `video_shape` [t, h, w, 3]; else ValueError."""
  query_points = np.asarray(query_points, np.float32)
  if query_points.size == 0:
    query_points = query_points.reshape(0, 3)
  if query_points.ndim != 2 or query_points.shape[-1] != 3:
    raise ValueError(f'query_points must be [num_points, 3] as (t, y, x); got shape {query_points.shape}')
  shapes.check_query_points(query_points, video_shape)
  return query_points


class ChunkedTracker(abc.ABC):
  """An offline tracker for uint8 videos of any size; subclasses give the model (module docstring)."""

  family = ''  # `tapir.models.families` name, set by subclasses
  has_expected_dist = True  # whether the model has the expected-distance head

  def __init__(self, params, state, model_kwargs: Mapping[str, Any], query_chunk_size: int,
               resolution_hw: Sequence[int], dtype: Any = 'float32'):
    self.query_chunk_size = check_positive_int(query_chunk_size, 'query_chunk_size')
    self.dtype = precision.check_compute_dtype(dtype)  # of the convolutions and dense layers (`tapir.models.precision`)
    self.resolution = check_hw(resolution_hw, 'resolution')  # the input size videos go to by default
    self.model_kwargs = dict(model_kwargs)
    self.set_weights(params, state)
    features, chunk = self._build(self.model_kwargs)
    self._features = jax.jit(features)
    self._chunk = jax.jit(chunk)

  @abc.abstractmethod
  def _build(self, model_kwargs: Mapping[str, Any]) -> tuple[Callable, Callable]:
    """(features(params, state, rng, frames) -> (grids, state), chunk(params, state, rng, frames, grids,
    queries [1, c, 3]) -> ((tracks [1, c, t, 2], occlusion [1, c, t], expected_dist [1, c, t] | None), state)),
    computing in `self.dtype`."""

  @abc.abstractmethod
  def _visible(self, occlusion: np.ndarray, expected_dist: np.ndarray | None) -> np.ndarray:
    """[n, t] bool from the logits."""

  def set_weights(self, params, state) -> None:
    """Checks `params` (and state) against the architecture and uses them from now on (no recompilation)."""
    checkpoint_lib.check_params(params, self.model_kwargs, state, family=self.family)
    self.params = jax.device_put(params)
    self.state = jax.device_put(state)

  def predict(self, video: np.ndarray, query_points: np.ndarray,
              resize_to: Sequence[int] | str | None = MODEL_RESOLUTION, progress: bool = False,
              source_hw: Sequence[int] | None = None) -> TrackerOutput:
    """Tracks, visibility and logits of `query_points` [n, 3] (t, y, x) through uint8 `video` [t, h, w, 3].

    Args:
      resize_to: (height, width) the model runs at; 'model' (default) for `self.resolution`; None for the
        video's own size.
      progress: show a bar over the query chunks.
      source_hw: `video` was already resized from frames of this (height, width): queries are given, and tracks
        returned, in pixels of those frames, and the model runs at the video's size (`resize_to` must be left
        at its default).
    No query points give outputs with 0 rows ([0, t, 2] tracks, [0, t] the rest).
    """
    check_video(video)
    t, h, w, _ = video.shape
    if source_hw is not None:
      if not (isinstance(resize_to, str) and resize_to == MODEL_RESOLUTION):
        raise ValueError('give either source_hw (frames already resized) or resize_to, not both')
      frame_hw, model_hw = check_hw(source_hw, 'source_hw'), (h, w)
    else:
      frame_hw = (h, w)
      model_hw = resolve_resize_to(resize_to, self.resolution) or frame_hw
    query_points = check_queries(query_points, (t, *frame_hw, 3))
    n = query_points.shape[0]
    if not n:
      empty = np.zeros((0, t), np.float32)
      return TrackerOutput(np.zeros((0, t, 2), np.float32), np.zeros((0, t), bool), empty,
                           empty if self.has_expected_dist else None)
    frames = jnp.asarray(conventions.frames_to_model_input(resize_video(video, model_hw))[None])
    queries = conventions.rescale_tyx(query_points, frame_hw, model_hw)
    grids, _ = self._features(self.params, self.state, None, frames)
    size = min(self.query_chunk_size, n)
    padded = -(-n // size) * size
    queries = np.concatenate([queries, np.repeat(queries[:1], padded - n, axis=0)])
    outputs = []
    for start in tqdm.trange(0, padded, size, desc='query chunks', unit='chunk', disable=not progress):
      chunk, _ = self._chunk(self.params, self.state, None, frames, grids,
                             jnp.asarray(queries[None, start:start + size]))
      outputs.append(jax.device_get([None if x is None else x[0] for x in chunk]))
    tracks, occ, expd = (None if x[0] is None else np.concatenate(x)[:n] for x in zip(*outputs))
    tracks = conventions.rescale_xy(tracks, model_hw, frame_hw)
    return TrackerOutput(tracks=tracks, visible=self._visible(occ, expd), occlusion=occ, expected_dist=expd)

  def track(self, video: np.ndarray, query_points: np.ndarray,
            resize_to: Sequence[int] | str | None = MODEL_RESOLUTION) -> tuple[np.ndarray, np.ndarray]:
    """Tracks query points through a video.

    Args:
      video: uint8 [t, h, w, 3], any size.
      query_points: [n, 3] (t, y, x) in pixels of `video` (raster coordinates, see `tapir.conventions`).
      resize_to: as `predict`.
    Returns:
      tracks [n, t, 2] (x, y) in pixels of `video`, and visible [n, t] bool.
    """
    out = self.predict(video, query_points, resize_to)
    return out.tracks, out.visible
