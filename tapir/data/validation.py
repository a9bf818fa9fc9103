"""Checks for custom data: any iterable of example dicts can feed training and evaluation if it passes these.

A training/evaluation example (conventions in `tapir.conventions`):
  video          float32 [t, h, w, 3] in [-1, 1]
  query_points   float32 [n, 3] (t, y, x): t an integer-valued frame index in [0, t), y in [0, h], x in [0, w]
  target_points  float32 [n, t, 2] (x, y) raster pixels (may leave the frame where occluded)
  occluded       bool [n, t], True = occluded
Errors name the key and what is wrong with it.
"""

from typing import Mapping

import numpy as np

EXAMPLE_KEYS = ('video', 'query_points', 'target_points', 'occluded')


def _fail(key: str, problem: str):
  raise ValueError(f'example[{key!r}]: {problem}')


def validate_example(example: Mapping[str, np.ndarray], *, num_frames: int | None = None,
                     size: tuple[int, int] | None = None) -> None:
  """Raises ValueError naming the first wrong key, shape, dtype or range."""
  if not isinstance(example, Mapping):
    raise ValueError(f'an example must be a dict with keys {EXAMPLE_KEYS}; got {type(example).__name__}')
  missing = [k for k in EXAMPLE_KEYS if k not in example]
  if missing:
    raise ValueError(f'example is missing keys {missing}; it has {sorted(example)} (need {list(EXAMPLE_KEYS)})')
  video = np.asarray(example['video'])
  if video.dtype != np.float32:
    _fail('video', f'dtype must be float32 (values in [-1, 1]); got {video.dtype}')
  if video.ndim != 4 or video.shape[-1] != 3:
    _fail('video', f'shape must be [frames, height, width, 3]; got {video.shape}')
  t, h, w, _ = video.shape
  if num_frames is not None and t != num_frames:
    _fail('video', f'has {t} frames; this configuration needs {num_frames}')
  if size is not None and (h, w) != tuple(size):
    _fail('video', f'is {h}x{w}; this configuration needs {size[0]}x{size[1]}')
  if video.size and (video.min() < -1.0 - 1e-5 or video.max() > 1.0 + 1e-5):
    _fail('video', f'values must lie in [-1, 1]; got [{video.min():.3g}, {video.max():.3g}] '
          '(uint8 frames map to v / 255 * 2 - 1)')

  query = np.asarray(example['query_points'])
  if query.ndim != 2 or query.shape[-1] != 3:
    _fail('query_points', f'shape must be [num_points, 3] as (t, y, x); got {query.shape}')
  n = query.shape[0]
  if not np.issubdtype(query.dtype, np.floating):
    _fail('query_points', f'dtype must be float32; got {query.dtype}')
  if not np.isfinite(query).all():
    _fail('query_points', 'contains NaN or infinity')
  if (query[:, 0] != np.round(query[:, 0])).any() or (query[:, 0] < 0).any() or (query[:, 0] >= t).any():
    _fail('query_points', f'frame indices (column 0) must be integers in [0, {t}); got range '
          f'[{query[:, 0].min():.3g}, {query[:, 0].max():.3g}]')
  if (query[:, 1] < 0).any() or (query[:, 1] > h).any() or (query[:, 2] < 0).any() or (query[:, 2] > w).any():
    _fail('query_points', f'(y, x) must be raster pixels inside the {h}x{w} frame')

  target = np.asarray(example['target_points'])
  if target.shape != (n, t, 2):
    _fail('target_points', f'shape must be [num_points={n}, frames={t}, 2] as (x, y); got {target.shape}')
  if not np.issubdtype(target.dtype, np.floating) or not np.isfinite(target).all():
    _fail('target_points', f'must be finite float32; got dtype {target.dtype}')
  occluded = np.asarray(example['occluded'])
  if occluded.dtype != bool:
    _fail('occluded', f'dtype must be bool (True = occluded); got {occluded.dtype}')
  if occluded.shape != (n, t):
    _fail('occluded', f'shape must be [num_points={n}, frames={t}]; got {occluded.shape}')
