"""Conventions shared by every part of `tapir`. This is the one place that states them.

Axis glossary (used in shape comments everywhere):
  b: batch          t: frames          h, w: height, width (pixels or grid cells)
  n: query points   c: channels        d: mixer width

Tensors at the public boundary:
  video          float32 [b, t, h, w, 3]  RGB in [-1, 1]  (uint8 v maps to v / 255 * 2 - 1).
  query_points   float32 [b, n, 3]        (t, y, x): t a frame index, y and x raster pixels of `video`.
  tracks         float32 [b, n, t, 2]     (x, y) raster pixels of `video`. Note the order swap.
  occlusion      float32 [b, n, t]        logit; > 0 leans towards "occluded".
  expected_dist  float32 [b, n, t]        logit; > 0 leans towards "the track is more than a few pixels off"
                                          (trained with a 6 px threshold at 256x256).

Raster coordinates: (0, 0) is the top-left corner of the top-left pixel, so the centre of pixel (row i, col j)
is (y, x) = (i + 0.5, j + 0.5). Feature grids use the same convention in grid cells. Consequently a change of
resolution is a pure multiplication, `coords * out_size / in_size`, with no half-pixel shifts
(`convert_grid_coordinates`). Frame indices `t` are points, not cells: no offset is ever applied to them.

Visibility combines both logits: visible iff (1 - sigmoid(occlusion)) * (1 - sigmoid(expected_dist)) > 0.5.

TAP-Vid query modes (`QUERY_MODES`): 'first' queries each track at its first visible frame, 'strided' at every
5th frame where it is visible (`tapir.data.query_sampling`).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

QUERY_MODES = ('first', 'strided')


def convert_grid_coordinates(
    coords: jax.Array,  # [..., k]
    input_size: Sequence[float],  # k sizes, in the same axis order as coords
    output_size: Sequence[float],  # k sizes
) -> jax.Array:  # [..., k]
  """Rescales coordinates between two grid sizes of the same extent: `coords * out / in`.

  For (x, y) coordinates give sizes as (width, height); for (t, y, x) give (frames, height, width) with equal
  frame counts. Multiplication happens before division, as in the reference implementation.
  """
  if len(input_size) != coords.shape[-1] or len(output_size) != coords.shape[-1]:
    raise ValueError(
        f'coords have {coords.shape[-1]} components but sizes {tuple(input_size)} -> {tuple(output_size)}')
  xp = jnp if isinstance(coords, jax.Array) else np
  in_size = xp.asarray(input_size, dtype=coords.dtype)
  out_size = xp.asarray(output_size, dtype=coords.dtype)
  return coords * out_size / in_size


def rescale_tyx(
    points: jax.Array,  # [..., 3] (t, y, x)
    from_hw: Sequence[float],  # (height, width) the points are pixels of
    to_hw: Sequence[float],
) -> jax.Array:  # [..., 3] (t, y, x), frame indices unchanged
  """Query points from pixels of a `from_hw` frame to pixels of a `to_hw` frame (pure multiplication)."""
  return convert_grid_coordinates(points, (1, *from_hw), (1, *to_hw))


def rescale_xy(
    tracks: jax.Array,  # [..., 2] (x, y)
    from_hw: Sequence[float],  # (height, width) the tracks are pixels of
    to_hw: Sequence[float],
) -> jax.Array:  # [..., 2] (x, y)
  """Track positions from pixels of a `from_hw` frame to pixels of a `to_hw` frame (pure multiplication)."""
  return convert_grid_coordinates(tracks, tuple(from_hw)[::-1], tuple(to_hw)[::-1])


def xy_of_tyx(points: jax.Array) -> jax.Array:  # [..., 3] (t, y, x) -> [..., 2] (x, y)
  """The (x, y) position of (t, y, x) query points: the order tracks use."""
  return points[..., 2:0:-1]


def xy_of_yx(points: jax.Array) -> jax.Array:  # [..., 2] (y, x) -> [..., 2] (x, y)
  return points[..., ::-1]


def frames_to_model_input(frames: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] in [0, 255] -> float32 in [-1, 1]."""
  if frames.dtype != np.uint8:
    raise ValueError(f'expected uint8 frames, got {frames.dtype}')
  return frames.astype(np.float32) / 255.0 * 2.0 - 1.0


def visibility_from_logits(occlusion: jax.Array, expected_dist: jax.Array) -> jax.Array:
  """Combines the two logits into a boolean visibility (the rule released TAPIR demos use)."""
  xp = jnp if isinstance(occlusion, jax.Array) else np
  sig = lambda z: 1.0 / (1.0 + xp.exp(-z))
  return (1.0 - sig(occlusion)) * (1.0 - sig(expected_dist)) > 0.5


def interp(
    grid: jax.Array,  # [t, h, w, c] or [h, w, c]
    coords: jax.Array,  # [..., 3] (t, y, x) or [..., 2] (y, x): raster coordinates of the grid
    mode: str = 'nearest',
) -> jax.Array:  # [..., c]
  """(Bi/tri)linear sample of `grid` at raster coordinates.

  y and x are raster coordinates (pixel centres at i + 0.5); t is a frame index (no offset). `mode='nearest'`
  clamps every node index into the grid (edge replication); `mode='constant'` treats everything outside the grid
  as zeros. Equivalent to `jax.scipy.ndimage.map_coordinates(order=1)` on each channel.
  """
  spatial = grid.ndim - 1
  if coords.shape[-1] != spatial:
    raise ValueError(f'grid has {spatial} spatial axes but coords have {coords.shape[-1]} components')
  if mode not in ('nearest', 'constant'):
    raise ValueError(f'unknown interpolation mode {mode!r}')
  # Index coordinates: pixels are cells (-0.5), frames are points.
  offset = jnp.array([0.0] * (spatial - 2) + [0.5, 0.5], coords.dtype)
  index = coords - offset
  lo = jnp.floor(index)
  frac = index - lo
  lo = lo.astype(jnp.int32)
  sizes = grid.shape[:spatial]
  out = 0.0
  for corner in np.ndindex(*([2] * spatial)):
    idx, weight, valid = [], 1.0, True
    for axis, bit in enumerate(corner):
      i = lo[..., axis] + bit
      weight = weight * (frac[..., axis] if bit else 1.0 - frac[..., axis])
      if mode == 'constant':
        valid = valid & (i >= 0) & (i < sizes[axis])
      idx.append(jnp.clip(i, 0, sizes[axis] - 1))
    value = grid[tuple(idx)]
    if mode == 'constant':
      weight = jnp.where(valid, weight, 0.0)
    out = out + weight[..., None] * value
  return out
