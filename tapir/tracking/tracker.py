"""Tracking for people: uint8 video of any size in, tracks in that video's pixels and visibility out.

    tracker = tapir.Tracker.from_checkpoint('tapir_checkpoint_panning.npy', preset='tapir')
    queries = tapir.grid_query_points(video.shape[1:3], stride=32)          # [n, 3] (t, y, x)
    tracks, visible = tracker.track(video, queries)                         # [n, t, 2] (x, y), [n, t]

The video is resized (PIL Lanczos, as the reference demos do) to `resize_to` (by default the model's own
`initial_resolution`, 256x256 for the released models) before the model; queries and
tracks are rescaled by pure multiplication (`tapir.conventions`). Features are computed once per video and the
queries run in fixed-size chunks, so memory is bounded in the number of points and each input shape compiles
once.
"""

from typing import Any, Mapping, NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from tapir import checkpoint as checkpoint_lib
from tapir import conventions
from tapir.models import tapir as tapir_lib
from tapir.tracking.queries import check_positive_int
from tapir.video import check_video, resize_video

# Constructor settings of the released models (the table lives with the architecture rule).
PRESETS = checkpoint_lib.PRESETS
preset_kwargs = checkpoint_lib.preset_kwargs
MODEL_RESOLUTION = 'model'  # `resize_to` default: the model's own initial_resolution


def resolve_resize_to(resize_to: Any, model_kwargs: Mapping[str, Any]) -> tuple[int, int] | None:
  """'model' -> the model's resolution; None -> None (the video's own size); else validated (height, width)."""
  if isinstance(resize_to, str):
    if resize_to != MODEL_RESOLUTION:
      raise ValueError(f"resize_to must be 'model', None or (height, width); got {resize_to!r}")
    return model_resolution(model_kwargs)
  if resize_to is None:
    return None
  try:
    hw = tuple(resize_to)
  except TypeError:
    hw = ()
  if len(hw) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in hw):
    raise ValueError(f"resize_to must be (height, width) with both integers >= 1, 'model' or None; got "
                     f'{resize_to!r}')
  return int(hw[0]), int(hw[1])


def model_resolution(model_kwargs: Mapping[str, Any]) -> tuple[int, int]:
  """The (height, width) a model was built for: its `initial_resolution` (256x256 for the released models)."""
  return tuple(model_kwargs.get('initial_resolution', (256, 256)))


class TrackerOutput(NamedTuple):
  tracks: np.ndarray  # [n, t, 2] (x, y) pixels of the input video
  visible: np.ndarray  # [n, t] bool
  occlusion: np.ndarray  # [n, t] logit
  expected_dist: np.ndarray  # [n, t] logit


def init_params(model_kwargs: Mapping[str, Any], seed: int = 0):
  """Randomly initialised (params, state) of `tapir.TAPIR(**model_kwargs)`."""
  init_kwargs = {**model_kwargs, 'initial_resolution': (16, 16)}  # parameter shapes do not depend on it

  def forward(video, queries):
    return tapir_lib.TAPIR(**init_kwargs)(video, is_training=False, query_points=queries)

  init = jax.jit(hk.transform_with_state(forward).init)
  return init(jax.random.PRNGKey(seed), jnp.zeros((1, 2, 16, 16, 3)), jnp.zeros((1, 1, 3)))


class Tracker:
  """Offline TAPIR for arbitrary uint8 videos. See the module docstring."""

  def __init__(self, params, state, model_kwargs: Mapping[str, Any], query_chunk_size: int = 64):
    query_chunk_size = check_positive_int(query_chunk_size, 'query_chunk_size')
    self.model_kwargs = dict(model_kwargs)
    checkpoint_lib.check_params(params, self.model_kwargs)
    self.params = jax.device_put(params)
    self.state = jax.device_put(state)
    self.query_chunk_size = query_chunk_size
    self.resolution = model_resolution(self.model_kwargs)  # the input size the model was built for
    kwargs = self.model_kwargs

    def features(video):
      return tapir_lib.TAPIR(**kwargs).get_feature_grids(video, is_training=False)

    def chunk(video, feature_grids, query_points):
      model = tapir_lib.TAPIR(**kwargs)
      out = model(video, is_training=False, query_points=query_points, feature_grids=feature_grids)
      return out['tracks'], out['occlusion'], out['expected_dist']

    self._features = jax.jit(hk.transform_with_state(features).apply)
    self._chunk = jax.jit(hk.transform_with_state(chunk).apply)

  @classmethod
  def from_checkpoint(cls, path: str, preset: str | None = None, query_chunk_size: int = 64,
                      **overrides) -> 'Tracker':
    """Loads a checkpoint of either format; the architecture follows `checkpoint.resolve_model_kwargs`.

    Settings stored in the file win (a contradicting `preset` is an error); a released checkpoint needs its
    `preset` (see PRESETS) unless its parameter layout determines it.
    """
    contents = checkpoint_lib.read_checkpoint(path)
    kwargs = checkpoint_lib.resolve_model_kwargs(contents.model_kwargs, preset, contents.params, overrides)
    return cls(contents.params, contents.state, kwargs, query_chunk_size)

  @classmethod
  def random_init(cls, preset: str = 'tapir', seed: int = 0, query_chunk_size: int = 64, **overrides) -> 'Tracker':
    """A tracker with randomly initialised weights (for trying the API and for tests)."""
    kwargs = preset_kwargs(preset, **overrides)
    return cls(*init_params(kwargs, seed), kwargs, query_chunk_size)

  def predict(self, video: np.ndarray, query_points: np.ndarray,
              resize_to: Sequence[int] | str | None = MODEL_RESOLUTION, progress: bool = False) -> TrackerOutput:
    """Tracks, visibility and both logits. Arguments as `track`; `progress` shows a bar over the query chunks.

    No query points give outputs with 0 rows ([0, t, 2] tracks, [0, t] the rest).
    """
    check_video(video)
    resize_to = resolve_resize_to(resize_to, self.model_kwargs)
    query_points = np.asarray(query_points, np.float32)
    if query_points.size == 0:
      query_points = query_points.reshape(0, 3)
    if query_points.ndim != 2 or query_points.shape[-1] != 3:
      raise ValueError(f'query_points must be [num_points, 3] as (t, y, x); got shape {query_points.shape}')
    tapir_lib.check_query_points(query_points, video.shape)
    t, h, w, _ = video.shape
    if not query_points.shape[0]:
      return TrackerOutput(tracks=np.zeros((0, t, 2), np.float32), visible=np.zeros((0, t), bool),
                           occlusion=np.zeros((0, t), np.float32), expected_dist=np.zeros((0, t), np.float32))
    model_hw = (h, w) if resize_to is None else resize_to
    frames = conventions.frames_to_model_input(resize_video(video, model_hw))[None]  # [1, t, h', w', 3]
    queries = conventions.convert_grid_coordinates(query_points, (t, h, w), (t,) + model_hw)

    frames = jnp.asarray(frames)
    grids, _ = self._features(self.params, self.state, None, frames)
    n = queries.shape[0]
    size = min(self.query_chunk_size, n)
    padded = -(-n // size) * size
    queries = np.concatenate([queries, np.repeat(queries[:1], padded - n, axis=0)])
    outputs = []
    for start in tqdm.trange(0, padded, size, desc='query chunks', unit='chunk', disable=not progress):
      (tracks, occ, expd), _ = self._chunk(self.params, self.state, None, frames, grids,
                                           jnp.asarray(queries[None, start:start + size]))
      outputs.append(jax.device_get((tracks[0], occ[0], expd[0])))
    tracks, occ, expd = (np.concatenate(x)[:n] for x in zip(*outputs))
    tracks = conventions.convert_grid_coordinates(tracks, model_hw[::-1], (w, h))
    visible = conventions.visibility_from_logits(occ, expd)
    return TrackerOutput(tracks=tracks, visible=visible, occlusion=occ, expected_dist=expd)

  def track(self, video: np.ndarray, query_points: np.ndarray,
            resize_to: Sequence[int] | str | None = MODEL_RESOLUTION) -> tuple[np.ndarray, np.ndarray]:
    """Tracks query points through a video.

    Args:
      video: uint8 [t, h, w, 3], any size.
      query_points: [n, 3] (t, y, x) in pixels of `video` (raster coordinates, see `tapir.conventions`).
      resize_to: (height, width) the model runs at; 'model' (default) for the model's own
        `initial_resolution` (256x256 for the released models, as in the demos); None for the video's own size
        (the model then refines at several resolutions).
    Returns:
      tracks [n, t, 2] (x, y) in pixels of `video`, and visible [n, t] bool.
    """
    out = self.predict(video, query_points, resize_to)
    return out.tracks, out.visible
