"""TAP-Vid query sampling (spec 4.3) and the rescaling of coordinates to the metric resolution.

'first': every track queried once, at its first visible frame. 'strided': every track queried at each frame
0, stride, 2 * stride, ... where it is visible. Coordinates are raster pixels (`tapir.conventions`).
"""

from typing import Sequence

import numpy as np

from tapir import conventions

DEFAULT_STRIDE = 5  # strided mode queries every visible point at frames 0, 5, 10, ...


def _check_tracks(occluded: np.ndarray, tracks: np.ndarray) -> None:
  if occluded.ndim != 2 or tracks.shape != occluded.shape + (2,):
    raise ValueError(f'expected occluded [n, t] and tracks [n, t, 2], got {occluded.shape} and {tracks.shape}')


def sample_queries_first(
    occluded: np.ndarray,  # [n, t] bool
    tracks: np.ndarray,  # [n, t, 2] (x, y) pixels
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # [q, 3] (t, y, x), [q, t, 2], [q, t]
  """Queries every track at its first visible frame; tracks never visible are dropped, order is kept."""
  occluded = np.asarray(occluded, bool)
  _check_tracks(occluded, tracks)
  visible = ~occluded
  kept = np.flatnonzero(visible.any(axis=1))  # [q]
  first = np.argmax(visible[kept], axis=1)  # [q] first True
  xy = tracks[kept, first]  # [q, 2]
  query_points = np.stack([first, xy[:, 1], xy[:, 0]], axis=-1).astype(np.float32)
  return query_points, tracks[kept], occluded[kept]


def sample_queries_strided(
    occluded: np.ndarray,  # [n, t] bool
    tracks: np.ndarray,  # [n, t, 2] (x, y) pixels
    stride: int = DEFAULT_STRIDE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # [q, 3], [q, t, 2], [q, t], [q] int32
  """Queries every track visible at frames 0, stride, 2 * stride, ...; ordered by frame, then track index.

  A track is queried once per stride frame where it is visible (`trackgroup` holds its index); tracks visible at
  no stride frame are dropped.
  """
  occluded = np.asarray(occluded, bool)
  _check_tracks(occluded, tracks)
  if stride < 1:
    raise ValueError(f'stride must be >= 1, got {stride}')
  groups = [np.flatnonzero(~occluded[:, f]) for f in range(0, occluded.shape[1], stride)]
  frames = [np.full(len(g), f) for f, g in zip(range(0, occluded.shape[1], stride), groups)]
  trackgroup = np.concatenate(groups).astype(np.int32) if groups else np.zeros([0], np.int32)
  frame = np.concatenate(frames) if frames else np.zeros([0], np.int64)
  xy = tracks[trackgroup, frame]  # [q, 2]
  query_points = np.stack([frame, xy[:, 1], xy[:, 0]], axis=-1).astype(np.float32)
  return query_points, tracks[trackgroup], occluded[trackgroup], trackgroup


def rescale_to_metric_resolution(
    query_points: np.ndarray | None,  # [..., 3] (t, y, x) pixels of a video of size video_hw
    tracks: np.ndarray | None,  # [..., 2] (x, y) pixels of that video
    video_hw: Sequence[int],
    metric_hw: Sequence[int] = (256, 256),
) -> tuple[np.ndarray | None, np.ndarray | None]:
  """Rescales coordinates to the metric resolution by pure multiplication (t unchanged); None passes through."""
  (h, w), (mh, mw) = video_hw, metric_hw
  if query_points is not None:
    query_points = conventions.convert_grid_coordinates(np.asarray(query_points), (1, h, w), (1, mh, mw))
  if tracks is not None:
    tracks = conventions.convert_grid_coordinates(np.asarray(tracks), (w, h), (mw, mh))
  return query_points, tracks
