"""TAP-Net for people: uint8 video of any size and length in, tracks in that video's pixels and visibility out.

    tracker = TAPNetTracker.from_checkpoint('checkpoints/tapnet_checkpoint.npy')   # released TAP-Net
    tracks, visible = tracker.track(video, query_points)   # [n, t, 2] (x, y), [n, t] bool

The counterpart of `tapir.Tracker` for the baseline (`tapir.models.tapnet`): same inputs, resizing (PIL Lanczos)
and coordinate rescaling; visible iff the occlusion logit is <= 0 (TAP-Net has no expected-distance head).
"""

from typing import Any, Mapping, NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from tapir import checkpoint as checkpoint_lib
from tapir import conventions
from tapir import video as video_lib
from tapir.models import tapir as tapir_lib
from tapir.models import tapnet as tapnet_lib


class TAPNetOutput(NamedTuple):
  tracks: np.ndarray  # [n, t, 2] (x, y) pixels of the input video
  visible: np.ndarray  # [n, t] bool: occlusion logit <= 0 (the reference's sigmoid(occlusion) <= 0.5)
  occlusion: np.ndarray  # [n, t] logit


class TAPNetTracker:
  """TAP-Net for uint8 videos of any size and length, the way the reference evaluates it.

  Frames are resized to `resolution` (default 256x256, the released checkpoint's training and evaluation size;
  `predict(..., resize_to=None)` keeps the video's own size), the whole video goes through the
  model in one call (the backbone takes the frame count from the video, so any length works and every frame's
  temporal shift sees its true neighbours; no windows), and queries run `query_chunk_size` at a time (padded,
  so each video shape compiles once). Tracks are mapped back to the input's pixels by pure rescaling.
  """

  def __init__(self, params, state, model_kwargs: Mapping[str, Any] | None = None, query_chunk_size: int = 16,
               resolution: Sequence[int] = tapnet_lib.RESOLUTION):
    """`resolution`: (height, width) videos are resized to by default (`predict`'s `resize_to`)."""
    kwargs = {k: v for k, v in (model_kwargs or {}).items() if k != 'cross_replica_axis'}
    tapnet_lib.check_params(params, state, kwargs)
    if query_chunk_size < 1:
      raise ValueError(f'query_chunk_size must be >= 1; got {query_chunk_size}')
    self.model_kwargs = kwargs
    self.params = jax.device_put(params)
    self.state = jax.device_put(state)
    self.query_chunk_size = query_chunk_size
    if len(resolution) != 2 or min(resolution) < 1:
      raise ValueError(f'resolution must be (height, width) with positive sizes; got {tuple(resolution)}')
    self.resolution = tuple(int(s) for s in resolution)
    model = lambda: tapnet_lib.TAPNet(**kwargs, cross_replica_axis=None)
    no_queries = lambda video: jnp.zeros((video.shape[0], 1, 3), jnp.float32)

    def features(video):
      return model()(video, False, no_queries(video), compute_regression=False)['feature_grid']

    def chunk(video, grid, query_points):
      out = model()(video, False, query_points, feature_grid=grid)
      return out['tracks'], out['occlusion']

    self._features = jax.jit(hk.transform_with_state(features).apply)
    self._chunk = jax.jit(hk.transform_with_state(chunk).apply)

  @classmethod
  def from_checkpoint(cls, path, query_chunk_size: int = 16, resolution: Sequence[int] = tapnet_lib.RESOLUTION,
                      **model_kwargs) -> 'TAPNetTracker':
    contents = checkpoint_lib.read_checkpoint(path)
    return cls(contents.params, contents.state, model_kwargs, query_chunk_size, resolution)

  def predict(self, video: np.ndarray, query_points: np.ndarray,
              resize_to: Sequence[int] | None | str = 'default', progress: bool = False) -> TAPNetOutput:
    """video uint8 [t, h, w, 3]; query_points [n, 3] (t, y, x) pixels of `video`.

    `resize_to`: (height, width) to run at; 'default' (or 'model') = `self.resolution`; None = the video's own
    size. `progress` shows a bar over the query chunks.
    """
    video_lib.check_video(video)
    query_points = np.asarray(query_points, np.float32)
    if query_points.ndim != 2 or query_points.shape[-1] != 3:
      raise ValueError(f'query_points must be [num_points, 3] as (t, y, x); got shape {query_points.shape}')
    tapir_lib.check_query_points(query_points, video.shape)
    t, h, w, _ = video.shape
    if isinstance(resize_to, str):
      if resize_to not in ('default', 'model'):
        raise ValueError(f"resize_to must be (height, width), None or 'default'; got {resize_to!r}")
      resize_to = self.resolution
    model_hw = (h, w) if resize_to is None else tuple(resize_to)
    frames = jnp.asarray(conventions.frames_to_model_input(video_lib.resize_video(video, model_hw))[None])
    queries = conventions.convert_grid_coordinates(query_points, (t, h, w), (t,) + model_hw)
    n = queries.shape[0]
    if n == 0:  # no queries: empty outputs of the right shapes, no model call
      return TAPNetOutput(tracks=np.zeros((0, t, 2), np.float32), visible=np.zeros((0, t), bool),
                          occlusion=np.zeros((0, t), np.float32))
    grid, _ = self._features(self.params, self.state, None, frames)
    size = min(self.query_chunk_size, n)
    padded = -(-n // size) * size
    queries = np.concatenate([queries, np.repeat(queries[:1], padded - n, axis=0)])
    outputs = []
    for start in tqdm.tqdm(range(0, padded, size), desc='query chunks', disable=not progress):
      (tracks, occ), _ = self._chunk(self.params, self.state, None, frames, grid,
                                     jnp.asarray(queries[None, start:start + size]))
      outputs.append(jax.device_get((tracks[0], occ[0])))
    tracks, occ = (np.concatenate(x)[:n] for x in zip(*outputs))
    tracks = conventions.convert_grid_coordinates(tracks, model_hw[::-1], (w, h))
    return TAPNetOutput(tracks=tracks, visible=occ <= 0, occlusion=occ)

  def track(self, video: np.ndarray, query_points: np.ndarray,
            resize_to: Sequence[int] | None | str = 'default') -> tuple[np.ndarray, np.ndarray]:
    """tracks [n, t, 2] (x, y) pixels of `video` and visible [n, t] bool."""
    out = self.predict(video, query_points, resize_to)
    return out.tracks, out.visible
