"""The reference's `snap_to_occluder` option of the MOVi-E track pipeline (kubric `add_tracks`), in numpy.

Off by default (TAPIR trains without it). On, two things change in `kubric.make_training_example`:

1. `erode_segmentations`: pixels that a nearer surface borders within 1 px are masked (id -1). Queries are sampled
   from the masked map, and `kubric.track_points` uses it for the segment test (a track is hidden where none of
   its 4 nearest pixels carries its id, and masked pixels carry none).
2. `snap_query_pixels`: after the draws, each query may move to a random 8-neighbour that lies behind it, keeping
   its track. A query pixel just beside an occluder's edge is thus labelled with the occluder's motion: the
   model learns to follow the occluding (foreground) surface at boundaries rather than the one behind.

Shapes: t frames, h x w source pixels, n queries. Depths are `kubric.decode_depth` distances.
"""

import numpy as np

SNAP_DEPTH_RATIO = 0.95  # a neighbour nearer than 95% of a pixel's own depth is an occluder (the reference's)


def erode_segmentations(segmentations: np.ndarray,  # [t, h, w] int segment ids
                        depth: np.ndarray) -> np.ndarray:  # [t, h, w] float -> [t, h, w] int64
  """Segment ids with -1 wherever a pixel is about to be occluded.

  A pixel is masked if any of its 8 neighbours is nearer than SNAP_DEPTH_RATIO of its own depth; at the border
  the edge pixels are repeated (the reference's SYMMETRIC padding), so the frame edge masks nothing.
  """
  depth = np.asarray(depth)
  if depth.ndim != 3 or np.shape(segmentations) != depth.shape:
    raise ValueError(f'segmentations and depth must both be [t, h, w]; got {np.shape(segmentations)} and '
                     f'{depth.shape}')
  h, w = depth.shape[1:3]
  padded = np.pad(depth, ((0, 0), (1, 1), (1, 1)), mode='symmetric')
  threshold = depth * np.float32(SNAP_DEPTH_RATIO)
  nearer = np.zeros(depth.shape, bool)
  for dy in range(3):
    for dx in range(3):
      if (dy, dx) != (1, 1):
        nearer |= padded[:, dy:dy + h, dx:dx + w] < threshold
  return np.where(nearer, -1, np.asarray(segmentations).astype(np.int64))


def snap_query_pixels(rng: np.random.Generator,
                      pixels: np.ndarray,  # [n, 3] int (t, row, col) source pixels
                      depth: np.ndarray) -> np.ndarray:  # [t, h, w] float -> [n, 3] int64 (t, row, col)
  """The query pixels, some moved by one pixel onto the surface behind them (their tracks are not recomputed).

  Each pixel draws an offset in {-1, 0, 1}^2 (the position clamped into the frame; the frame index stays), then
  each a coin p ~ U[0, 1) (the reference's draw order). It moves if p < 0.5 and its own depth is below
  SNAP_DEPTH_RATIO of the depth at the new position. Sampled from `erode_segmentations`, a pixel has no nearer
  neighbour, so only queries on the near side of a depth edge (on the occluder) ever move.

  [reference quirk, not kept] The reference reads the original pixel's depth at a mis-computed flat index
  (frame t, row t, column = row); we read the pixel itself, which is what its comment describes.
  [left open by the spec; the reference's choice] The offset is clamped to the frame, not to the crop window, so
  with a random crop a moved query may lie up to 1 source pixel outside the crop.
  """
  pixels = np.asarray(pixels, np.int64).reshape(-1, 3)
  h, w = np.shape(depth)[1:3]
  moved = np.clip(pixels[:, 1:] + rng.integers(-1, 2, (len(pixels), 2)), 0, [h - 1, w - 1])  # [n, 2] (row, col)
  here = depth[pixels[:, 0], pixels[:, 1], pixels[:, 2]]
  there = depth[pixels[:, 0], moved[:, 0], moved[:, 1]]
  swap = (here < there * np.float32(SNAP_DEPTH_RATIO)) & (rng.uniform(size=len(pixels)) < 0.5)
  return np.where(swap[:, None], np.concatenate([pixels[:, :1], moved], -1), pixels)
