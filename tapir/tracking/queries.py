"""Query points for people: a regular grid, a mask, a command-line list; checks of integer arguments.

Every function returns float32 [n, 3] queries as (t, y, x) in raster pixels of the video (`tapir.conventions`):
pixel centres sit at `i + 0.5`.
"""

import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from tapir.models import tapir as tapir_lib

_POINTS_ACROSS = 32  # mask queries from the command line: about this many grid points across the short side

def check_positive_int(value: Any, name: str) -> int:
  """`value` as an int >= 1, else ValueError naming `name`."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name} must be an integer >= 1; got {value!r}')
  return int(value)


def grid_query_points(frame_hw: Sequence[int], stride: int = 8, query_frame: int = 0) -> np.ndarray:
  """Queries at the centres of pixels on a regular grid (rows stride//2, stride//2 + stride, ...) of a frame.

  Returns [n, 3] float32 (t, y, x), row-major (y outer). `stride` must be in [1, min(h, w)].
  """
  h, w = (check_positive_int(s, 'frame_hw') for s in frame_hw)
  stride = check_positive_int(stride, 'stride')
  if stride > min(h, w):
    raise ValueError(f'stride must be in [1, {min(h, w)}] (the shorter side of the {h}x{w} frame); got {stride}')
  if isinstance(query_frame, bool) or not isinstance(query_frame, (int, np.integer)) or query_frame < 0:
    raise ValueError(f'query_frame must be an integer >= 0; got {query_frame!r}')
  ys = np.arange(stride // 2, h, stride) + 0.5
  xs = np.arange(stride // 2, w, stride) + 0.5
  yy, xx = np.meshgrid(ys, xs, indexing='ij')
  t = np.full(yy.size, query_frame)
  return np.stack([t, yy.ravel(), xx.ravel()], axis=-1).astype(np.float32)


def mask_query_points(mask: np.ndarray, query_frame: int = 0, stride: int = 8,
                      num_points: int | None = None, seed: int = 0) -> np.ndarray:
  """Queries at pixel centres inside a boolean mask [h, w] of frame `query_frame`.

  Takes the pixels of a regular grid (`stride`) that fall inside the mask; with `num_points`, instead draws
  that many distinct mask pixels at random (seeded). Returns [n, 3] float32 (t, y, x).
  """
  mask = np.asarray(mask)
  if mask.ndim != 2 or mask.dtype != bool:
    raise ValueError(f'mask must be a boolean [height, width] array; got {mask.dtype} {mask.shape}')
  stride = check_positive_int(stride, 'stride')
  if num_points is not None:
    num_points = check_positive_int(num_points, 'num_points')
  if num_points is None:
    grid = np.zeros_like(mask)
    grid[stride // 2::stride, stride // 2::stride] = True
    rows, cols = np.nonzero(mask & grid)
  else:
    rows, cols = np.nonzero(mask)
    if num_points > rows.size:
      raise ValueError(f'asked for {num_points} points but the mask has only {rows.size} pixels')
    pick = np.random.default_rng(seed).choice(rows.size, num_points, replace=False)
    rows, cols = rows[np.sort(pick)], cols[np.sort(pick)]
  if rows.size == 0:
    raise ValueError('the mask selects no query points (empty mask or stride larger than the masked region)')
  t = np.full(rows.size, query_frame)
  return np.stack([t, rows + 0.5, cols + 0.5], axis=-1).astype(np.float32)


def grid_points(frame_hw: Sequence[int], n: int, query_frame: int = 0) -> np.ndarray:  # [n * n, 3]
  """An n x n grid of queries at pixel centres, evenly spread over the frame (row-major, (t, y, x))."""
  h, w = frame_hw
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n > min(h, w):
    raise ValueError(f'--grid must be an integer in [1, {min(h, w)}] for {h}x{w} frames; got {n!r}')
  ys = np.floor((np.arange(n) + 0.5) * h / n) + 0.5
  xs = np.floor((np.arange(n) + 0.5) * w / n) + 0.5
  yy, xx = np.meshgrid(ys, xs, indexing='ij')
  return np.stack([np.full(yy.size, query_frame), yy.ravel(), xx.ravel()], -1).astype(np.float32)


def parse_points(spec: str) -> np.ndarray:  # [n, 3] float32 (t, y, x)
  """Parses "t,y,x;t,y,x;..." (frame index and raster pixels of the video) into query points."""
  rows = []
  for item in (s.strip() for s in spec.split(';')):
    if not item:
      continue
    try:
      row = [float(v) for v in item.split(',')]
    except ValueError:
      row = []
    if len(row) != 3 or not (np.abs(row) <= np.finfo(np.float32).max).all():  # NaN, inf, float32 overflow
      raise ValueError(f'cannot parse point {item!r}: expected "t,y,x" (frame index, row, column in pixels)')
    rows.append(row)
  if not rows:
    raise ValueError(f'no points in {spec!r}: expected "t,y,x;t,y,x;..."')
  return np.asarray(rows, np.float32)


def load_mask(path: str | os.PathLike, frame_hw: Sequence[int]) -> np.ndarray:  # [h, w] bool
  """Reads a mask image (nonzero = inside; alpha or luminance) that must have the video's frame size."""
  try:
    with Image.open(path) as image:
      if image.mode in ('RGBA', 'LA') and np.asarray(image.getchannel('A')).min() < 255:
        mask = np.asarray(image.getchannel('A')) > 0
      else:
        mask = np.asarray(image.convert('L')) > 0
  except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ... for damaged images
    raise ValueError(f'cannot read mask {path}: {e}') from e
  if mask.shape != tuple(frame_hw):
    raise ValueError(f'mask {path} is {mask.shape[0]}x{mask.shape[1]} (height x width) but the video frames are '
                     f'{frame_hw[0]}x{frame_hw[1]}')
  return mask


def make_query_points(video_shape: Sequence[int], grid: int | None = None, points: str | None = None,
                      mask: str | None = None, mask_frame: int = 0) -> np.ndarray:  # [n, 3] (t, y, x)
  """Query points from exactly one of `grid` (n x n on frame 0), `points` ("t,y,x;...") or a `mask` image."""
  t, h, w = video_shape[:3]
  if sum(x is not None for x in (grid, points, mask)) != 1:
    raise ValueError('give exactly one of --grid, --points and --mask')
  if grid is not None:
    queries = grid_points((h, w), grid)
  elif points is not None:
    queries = parse_points(points)
  else:
    if isinstance(mask_frame, bool) or not isinstance(mask_frame, (int, np.integer)) or not 0 <= mask_frame < t:
      raise ValueError(f'--mask_frame must be a frame of the video (an integer in 0..{t - 1}); got {mask_frame!r}')
    stride = max(1, min(h, w) // _POINTS_ACROSS)
    queries = mask_query_points(load_mask(mask, (h, w)), mask_frame, stride=stride)
  tapir_lib.check_query_points(queries, (t, h, w, 3))
  return queries

def check_points_yx(query_points_yx: Any) -> np.ndarray:  # [n, 2] float32 (y, x)
  """Points as float32 [n, 2] (y, x) (the online tracker's queries); else ValueError."""
  query_points_yx = np.asarray(query_points_yx, np.float32)
  if query_points_yx.size == 0:
    query_points_yx = query_points_yx.reshape(0, 2)
  if query_points_yx.ndim != 2 or query_points_yx.shape[-1] != 2:
    raise ValueError(f'query_points_yx must be [num_points, 2] as (y, x); got shape {query_points_yx.shape}')
  return query_points_yx
