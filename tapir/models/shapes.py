"""TAPIR's feature containers, the shape and value checks of its inputs, and the default refinement resolutions."""

import math
from typing import NamedTuple, Sequence

import jax
import numpy as np

Resolution = tuple[int, int]  # (height, width)


class FeatureGrids(NamedTuple):
  """Per resolution entry (the initial resolution first, then one per refinement level)."""
  lowres: tuple[jax.Array, ...]  # each [b, t, h/8, w/8, 256], unit-norm feature vectors
  hires: tuple[jax.Array, ...]  # each [b, t, h/4, w/4, 128], unit-norm feature vectors

  @property
  def resolutions(self) -> tuple[Resolution, ...]:
    """(h, w) of the image actually encoded for each entry (always a multiple of 8, so 4 x the hires grid)."""
    return tuple((g.shape[2] * 4, g.shape[3] * 4) for g in self.hires)


class QueryFeatures(NamedTuple):
  """Per resolution entry, each query's features sampled at its own frame."""
  lowres: tuple[jax.Array, ...]  # each [b, n, 256]
  hires: tuple[jax.Array, ...]  # each [b, n, 128]


def generate_default_resolutions(video_hw: Sequence[int], initial_hw: Sequence[int]) -> list[Resolution]:
  """Refinement levels from `initial_hw` up to the video size, about a factor 2 apart, multiples of 8."""
  video_hw, initial_hw = tuple(video_hw), tuple(initial_hw)
  if video_hw == initial_hw:
    return [initial_hw]
  levels = int(math.ceil(max(math.log2(video_hw[0] / initial_hw[0]), math.log2(video_hw[1] / initial_hw[1]))))
  levels += 1
  if levels <= 1:
    return [initial_hw]
  out = []
  for i in range(levels):
    h = initial_hw[0] * (video_hw[0] / initial_hw[0])**(i / (levels - 1))
    w = initial_hw[1] * (video_hw[1] / initial_hw[1])**(i / (levels - 1))
    out.append((int(h // 8) * 8, int(w // 8) * 8))
  return out


def check_video(video) -> None:
  if video.ndim != 5 or video.shape[-1] != 3:
    raise ValueError(f'video must be [batch, frames, height, width, 3] (RGB in [-1, 1]); got shape '
                     f'{tuple(video.shape)}')


def check_query_points_shape(query_points, video_shape) -> None:
  b = video_shape[0]
  if query_points.ndim != 3 or query_points.shape[-1] != 3 or query_points.shape[0] != b:
    raise ValueError(f'query_points must be [batch={b}, num_points, 3] as (t, y, x); got shape '
                     f'{tuple(query_points.shape)}')


def check_query_chunk_size(query_chunk_size) -> None:
  if query_chunk_size is not None and (isinstance(query_chunk_size, bool) or
                                       not isinstance(query_chunk_size, (int, np.integer)) or query_chunk_size < 1):
    raise ValueError(f'query_chunk_size must be None (one chunk) or an integer >= 1; got {query_chunk_size!r}')


def check_finite_query_points(query_points) -> None:
  """With concrete values (not under jit/grad tracing), NaN or infinite query coordinates are an error."""
  if isinstance(query_points, jax.core.Tracer):
    return
  q = np.asarray(query_points)
  if not np.isfinite(q).all():
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(q))[0])
    raise ValueError(f'query_points must be finite (t, y, x); got {q[first[:-1]].tolist()} at index {first[:-1]}')


def check_call(video, query_points, query_chunk_size) -> None:
  """The inputs of `TAPIR.__call__`: shapes always, query values when they are concrete (not traced)."""
  check_video(video)
  check_query_points_shape(query_points, video.shape)
  check_finite_query_points(query_points)
  check_query_chunk_size(query_chunk_size)


def check_query_points(query_points: np.ndarray, video_shape: Sequence[int]) -> None:
  """Raises if any (t, y, x) query lies outside a video of shape [..., t, h, w, 3] (t in [0, t-1]).

  The Haiku module itself follows the reference semantics (out-of-range queries read clamped features), so
  value checks live at the numpy boundary (`tapir.Tracker`) where the values are known.
  """
  t, h, w = video_shape[-4:-1]
  q = np.asarray(query_points)
  if q.ndim < 1 or q.shape[-1] != 3:
    raise ValueError(f'query points must be [..., 3] as (t, y, x); got shape {q.shape}')
  bad = ~((q[..., 0] >= 0) & (q[..., 0] <= t - 1) & (q[..., 1] >= 0) & (q[..., 1] <= h) & (q[..., 2] >= 0)
          & (q[..., 2] <= w))
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f'{int(bad.sum())} query point(s) lie outside the video (t in [0, {t - 1}], y in [0, {h}], x in '
        f'[0, {w}] raster pixels); first at index {first}: (t, y, x) = {tuple(q[first].tolist())}')


def check_resolution(hw: Sequence[int], what: str) -> None:
  if len(hw) != 2 or any(int(s) != s or s <= 0 or s % 8 for s in hw):
    raise ValueError(f'{what} must be (height, width) with both positive multiples of 8; got {tuple(hw)}')
