"""Kubric MOVi-E scenes -> TAPIR training examples (point tracks with exact ground truth), in numpy.

Input: a MOVi-E example dict as TFDS delivers it (keys `video`, `segmentations`, `depth`, `normal`,
`object_coordinates`, `camera/*`, `instances/*`, `metadata/*`; see training_and_data.md §3.2), from TFDS or from
`tapir.data.synthetic`. Output coordinates follow `tapir.conventions`.

The deterministic core is `track_points(example, query_points_src, crop_window)`: source pixels (t, row, col)
-> 3-D points (background: unprojected through depth, static; objects: object coordinates mapped through each
frame's 3-D box) -> reprojected per frame, with the occlusion rule (behind the camera, depth test with a 1%
tolerance over the 4 nearest pixels, segment test, outside the crop window, back-facing object surface).
`make_training_example` adds the random choices around it: crop window, query grid, per-segment quotas and draws,
and (off by default) the reference's `snap_to_occluder` (see `erode_segmentations` and `snap_query_pixels`).
"""

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from tapir.data import geometry
from tapir.data.kubric_snap import erode_segmentations, snap_query_pixels
# Camera geometry lives in `geometry`; `project` and `unproject` stay public names of this module too.
from tapir.data.geometry import project, quaternion_to_matrix, unproject

STRIDE = 4
MAX_SEG_ID = 25
DEPTH_TOLERANCE = 0.99  # a point is hidden if the surface in front is nearer than 99% of its own depth
NORMAL_DIFFERENCE = 0.05  # neighbouring normals further apart than this make a pixel's normal untrusted
# The unit cube's corners in MOVi-E's bboxes_3d order: x slowest, z fastest.
UNIT_CORNERS = geometry.box_corners(np.full(3, 0.5))


class Tracks(NamedTuple):
  target_points: np.ndarray  # [n, t, 2] (x, y) raster pixels of the output frame
  occluded: np.ndarray  # [n, t] bool
  query_points: np.ndarray  # [n, 3] (t, y, x) raster pixels of the output frame


# ------------------------------------------------------------------------------------------------------
# Decoding and camera geometry


def decode_depth(example) -> np.ndarray:  # [t, h, w] Euclidean distance to the camera centre
  lo, hi = np.asarray(example['metadata/depth_range'], np.float32)
  return lo + np.asarray(example['depth'][..., 0], np.float32) * ((hi - lo) / 65535.0)


def decode_normals(example) -> np.ndarray:  # [t, h, w, 3] world normals (not renormalised)
  return np.asarray(example['normal'], np.float32) / 65535.0 * 2.0 - 1.0


def decode_object_coordinates(example) -> np.ndarray:  # [t, h, w, 3] in [-0.5, 0.5]
  return np.asarray(example['object_coordinates'], np.float32) / 65535.0 - 0.5


def camera_intrinsics(example, height: int, width: int) -> np.ndarray:  # [t, 3, 3]
  """Normalised-image intrinsics; fy = fx * h / w is the reference's (square-image) convention."""
  k = geometry.intrinsics_matrix(example['camera/focal_length'], example['camera/sensor_width'], height, width)
  return np.broadcast_to(k, (len(example['camera/positions']), 3, 3)).copy()


def camera_matrix_world(example) -> np.ndarray:  # [t, 4, 4] camera-to-world
  return geometry.matrix_world(example['camera/positions'], quaternion_to_matrix(example['camera/quaternions']))


def box_transforms(bboxes_3d: np.ndarray) -> np.ndarray:
  """[k, t, 8, 3] world box corners -> [k, t, 4, 4] A with [c, 1] @ A = world point (least squares)."""
  c = np.concatenate([UNIT_CORNERS, np.ones((8, 1))], -1)  # [8, 4]
  b = np.concatenate([bboxes_3d, np.ones(bboxes_3d.shape[:-1] + (1,))], -1)  # [k, t, 8, 4]
  return np.einsum('ij,ktjl->ktil', np.linalg.pinv(c), b)


def reproject_objects(coords: np.ndarray, instance: np.ndarray, transforms: np.ndarray) -> np.ndarray:
  """Object coordinates [n, 3] of instances [n] -> world points [n, t, 3] in every frame."""
  homogeneous = np.concatenate([coords, np.ones((len(coords), 1))], -1)
  world = np.einsum('nj,ntjl->ntl', homogeneous, transforms[instance])
  return world[..., :3] / world[..., 3:]


# ------------------------------------------------------------------------------------------------------
# Occlusion


def _four_nearest(x: np.ndarray, y: np.ndarray, h: int, w: int):
  """Indices of the 4 pixels around raster positions (clamped): rows [.., 4], cols [.., 4]."""
  x0 = np.floor(x - 0.5).astype(np.int64)
  y0 = np.floor(y - 0.5).astype(np.int64)
  rows = np.clip(np.stack([y0, y0, y0 + 1, y0 + 1], -1), 0, h - 1)
  cols = np.clip(np.stack([x0, x0 + 1, x0, x0 + 1], -1), 0, w - 1)
  return rows, cols


def depth_segment_occluded(x: np.ndarray, y: np.ndarray, point_depth: np.ndarray, segment: np.ndarray,
                           depth: np.ndarray, segmentations: np.ndarray) -> np.ndarray:
  """x, y, point_depth [n, t]; segment [n]; depth [t, h, w]; segmentations [t, h, w] -> occluded [n, t]."""
  t, h, w = depth.shape
  rows, cols = _four_nearest(x, y, h, w)
  frames = np.broadcast_to(np.arange(t)[None, :, None], rows.shape)
  nearest_depth = depth[frames, rows, cols].max(-1)
  hidden = nearest_depth < DEPTH_TOLERANCE * point_depth
  other_segment = ~(segmentations[frames, rows, cols] == segment[:, None, None]).any(-1)
  return hidden | other_segment


def trusted_normals(normals: np.ndarray) -> np.ndarray:
  """[t, h, w, 3] -> [t, h, w] bool: at most 2 of the 4 diagonal neighbours (zero padded) differ by > 0.05."""
  padded = np.pad(normals, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = normals.shape[1:3]
  differing = 0
  for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
    neighbour = padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    differing = differing + (np.sum(np.square(neighbour - normals), -1) > NORMAL_DIFFERENCE**2)
  return differing <= 2


# ------------------------------------------------------------------------------------------------------
# The deterministic core


def track_points(
    example: Mapping[str, np.ndarray],
    query_points_src: np.ndarray,  # [n, 3] int (t, row, col) source pixels
    crop_window: Sequence[int] | None = None,  # [y0, x0, y1, x1] source pixels, max exclusive
    snap_to_occluder: bool = False,
) -> Tracks:
  """Tracks of the given source pixels through the clip, in the crop window's (source-sized) raster.

  With `snap_to_occluder`, the segment test reads `erode_segmentations` (as the reference does); each track's
  segment id is still read from the plain segmentation (the same at every pixel the eroded map lets one sample).
  """
  depth = decode_depth(example)
  t, h, w = depth.shape
  y0, x0, y1, x1 = (0, 0, h, w) if crop_window is None else [int(v) for v in crop_window]
  segmentations = np.asarray(example['segmentations'][..., 0]).astype(np.int64)
  frames, rows, cols = (np.asarray(query_points_src, np.int64)[:, i] for i in range(3))
  segment = segmentations[frames, rows, cols]
  intrinsics = camera_intrinsics(example, h, w)
  matrix_world = camera_matrix_world(example)
  n = len(frames)

  points = np.repeat(unproject(rows, cols, frames, depth, intrinsics, matrix_world)[:, None], t, axis=1)
  is_object = segment > 0
  back_facing = np.zeros((n, t), bool)
  if is_object.any():
    instance = segment[is_object] - 1
    coords = decode_object_coordinates(example)[frames, rows, cols][is_object]
    transforms = box_transforms(np.asarray(example['instances/bboxes_3d'], np.float64))
    points[is_object] = reproject_objects(coords, instance, transforms)
    # Back-facing test: rotate the query pixel's world normal with the object.
    rotations = quaternion_to_matrix(np.asarray(example['instances/quaternions'])[instance])  # [m, t, 3, 3]
    normal = decode_normals(example)[frames, rows, cols][is_object].astype(np.float64)
    query_rotation = rotations[np.arange(len(instance)), frames[is_object]]
    local = np.einsum('mji,mj->mi', query_rotation, normal)  # R^-1 n (rotations are orthonormal)
    normal_t = np.einsum('mtij,mj->mti', rotations, local)
    to_point = points[is_object] - matrix_world[None, :, :3, 3]
    faces_away = np.sum(normal_t * to_point, -1) > 0
    usable = ~faces_away[np.arange(len(instance)), frames[is_object]]
    usable &= trusted_normals(decode_normals(example))[frames, rows, cols][is_object]
    back_facing[is_object] = faces_away & usable[:, None]

  projected = project(points, intrinsics, matrix_world)
  x = projected[..., 0] * w
  y = projected[..., 1] * h
  point_depth = np.linalg.norm(points - matrix_world[None, :, :3, 3], axis=-1)
  occluded = projected[..., 2] < 0
  test_segments = erode_segmentations(segmentations, depth) if snap_to_occluder else segmentations
  occluded |= depth_segment_occluded(x, y, point_depth, segment, depth, test_segments)
  occluded |= (y < y0) | (x < x0) | (y > y1) | (x > x1)
  occluded |= back_facing

  target = np.stack([(x - x0) / (x1 - x0) * w, (y - y0) / (y1 - y0) * h], -1).astype(np.float32)
  query = query_raster(query_points_src, (y0, x0, y1, x1), h, w)
  return Tracks(target_points=target, occluded=occluded, query_points=query)


def query_raster(pixels: np.ndarray,  # [n, 3] int (t, row, col) source pixels
                 crop_window: Sequence[int], h: int, w: int) -> np.ndarray:  # [n, 3] float32 (t, y, x)
  """Source pixels -> query points at their pixel centres, in the crop window's (source-sized) raster."""
  frames, rows, cols = (np.asarray(pixels, np.int64)[:, i] for i in range(3))
  y0, x0, y1, x1 = crop_window
  return np.stack([frames, (rows + 0.5 - y0) / (y1 - y0) * h, (cols + 0.5 - x0) / (x1 - x0) * w],
                  -1).astype(np.float32)


# ------------------------------------------------------------------------------------------------------
# Random choices


def get_num_to_sample(counts: np.ndarray, tracks_to_sample: int, max_sampled_frac: float,
                      max_seg_id: int = MAX_SEG_ID) -> np.ndarray:
  """Per-segment quotas: equal shares for the smallest segments, capped at a fraction of their grid pixels."""
  counts = np.asarray(counts)
  if len(counts) > max_seg_id:
    raise ValueError(f'segment id {len(counts) - 1} >= max_seg_id={max_seg_id}')
  result = np.zeros(max_seg_id, np.int32)
  remaining = np.float32(tracks_to_sample)
  order = np.argsort(counts, kind='stable')
  for i, k in enumerate(order):
    want = np.round(remaining * np.float32(1.0 / (len(order) - i)))
    cap = np.round(np.float32(counts[k]) * np.float32(max_sampled_frac))
    take = min(want, cap)
    result[k] = int(take)
    remaining = np.float32(remaining - take)
  return result


def sample_crop_window(rng: np.random.Generator, h: int, w: int, min_object_covered=0.3,
                       aspect_ratio_range=(0.5, 2.0), area_range=(0.3, 1.0), max_attempts=20) -> np.ndarray:
  """A random [y0, x0, y1, x1] window in the spirit of tf.image.sample_distorted_bounding_box."""
  for _ in range(max_attempts):
    area = rng.uniform(*area_range) * h * w
    aspect = rng.uniform(*aspect_ratio_range)  # width / height
    ch = int(round(np.sqrt(area / aspect)))
    cw = int(round(ch * aspect))
    if not (0 < ch <= h and 0 < cw <= w) or ch * cw < min_object_covered * h * w:
      continue
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return np.array([y0, x0, y0 + ch, x0 + cw], np.int32)
  return np.array([0, 0, h, w], np.int32)


def sample_query_pixels(rng: np.random.Generator, segmentations: np.ndarray, crop_window: Sequence[int],
                        tracks_to_sample: int, sampling_stride: int = STRIDE, max_sampled_frac: float = 0.1,
                        max_seg_id: int = MAX_SEG_ID) -> np.ndarray:
  """[n, 3] (t, row, col) source pixels on a random strided grid, with per-segment quotas (-1 ids: never)."""
  t = segmentations.shape[0]
  y0, x0, y1, x1 = crop_window
  ot, oy, ox = rng.integers(0, sampling_stride, 3)
  ts, ys, xs = np.meshgrid(np.arange(ot, t, sampling_stride), np.arange(y0 + oy, y1, sampling_stride),
                           np.arange(x0 + ox, x1, sampling_stride), indexing='ij')
  grid = np.stack([ts.ravel(), ys.ravel(), xs.ravel()], -1)
  seg = segmentations[grid[:, 0], grid[:, 1], grid[:, 2]].astype(np.int64)
  counts = np.bincount(seg[seg >= 0])  # -1: masked by erode_segmentations
  quotas = get_num_to_sample(counts, tracks_to_sample, max_sampled_frac, max_seg_id)
  chosen = []
  for k in range(max_seg_id):
    members = np.nonzero(seg == k)[0]
    if quotas[k] == 0 or len(members) == 0:
      continue
    picks = grid[members[rng.integers(0, len(members), quotas[k])]]
    if k == 0:  # background rows regrouped by query frame
      picks = picks[np.argsort(picks[:, 0], kind='stable')]
    chosen.append(picks)
  return np.concatenate(chosen) if chosen else np.zeros((0, 3), np.int64)


def resize_bilinear_legacy(video: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """[t, h, w, c] -> [t, *size, c]: TF1 bilinear without half-pixel centres (output i samples i * in / out)."""
  out = video.astype(np.float32)
  for axis, (n_in, n_out) in ((1, (video.shape[1], size[0])), (2, (video.shape[2], size[1]))):
    if n_in == n_out:
      continue
    pos = np.arange(n_out) * (n_in / n_out)
    lo = np.floor(pos).astype(np.int64)
    frac = (pos - lo).astype(np.float32)
    hi = np.minimum(lo + 1, n_in - 1)
    shape = [1] * out.ndim
    shape[axis] = n_out
    frac = frac.reshape(shape)
    out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
  return out


def make_training_example(example: Mapping[str, np.ndarray], rng: np.random.Generator, tracks_to_sample: int = 256,
                          sampling_stride: int = STRIDE, max_seg_id: int = MAX_SEG_ID,
                          max_sampled_frac: float = 0.1, random_crop: bool = True,
                          train_size: Sequence[int] = (256, 256), vflip: bool = False,
                          snap_to_occluder: bool = False) -> dict[str, np.ndarray]:
  """A training example: video [t, h', w', 3] in [-1, 1], query_points [n, 3], target_points [n, t, 2],
  occluded [n, t], crop_window [4]. Fewer drawn tracks than `tracks_to_sample` are padded by repetition.

  `vflip` is the reference's evaluation option (spec 3.8, a quirk kept for parity): the video's rows are flipped
  and the y coordinates of queries and targets are *negated* (y -> -y), not mirrored to h' - y, so they no
  longer lie on the flipped video. `tapir.data.tapvid.read_kubric` mirrors instead (see there).

  `snap_to_occluder` (reference option, default off as in TAPIR's training): queries are sampled from
  `erode_segmentations`, whose masked pixels also fail the segment test, then moved by `snap_query_pixels`
  (the random draws come after the query draws, before padding), so queries within 1 px of an occluder's edge
  track the occluder rather than the surface behind it.
  """
  video = np.asarray(example['video'])
  t, h, w = video.shape[:3]
  window = sample_crop_window(rng, h, w) if random_crop else np.array([0, 0, h, w], np.int32)
  segmentations = np.asarray(example['segmentations'][..., 0])
  if snap_to_occluder:
    segmentations = erode_segmentations(segmentations, decode_depth(example))
  pixels = sample_query_pixels(rng, segmentations, window, tracks_to_sample, sampling_stride, max_sampled_frac,
                               max_seg_id)
  tracks = track_points(example, pixels, window, snap_to_occluder)
  target, occluded, query = tracks.target_points, tracks.occluded, tracks.query_points
  if snap_to_occluder:
    query = query_raster(snap_query_pixels(rng, pixels, decode_depth(example)), window, h, w)
  if 0 < len(query) < tracks_to_sample:  # reference quirk: pad with the second-to-last real row
    pad = tracks_to_sample - len(query)
    row = max(len(query) - 2, 0)
    target = np.concatenate([target, np.repeat(target[row:row + 1], pad, 0)])
    occluded = np.concatenate([occluded, np.repeat(occluded[row:row + 1], pad, 0)])
    query = np.concatenate([query, np.repeat(query[row:row + 1], pad, 0)])
  y0, x0, y1, x1 = window
  crop = resize_bilinear_legacy(video[:, y0:y1, x0:x1], train_size)
  if tuple(train_size) != (h, w):  # coordinates are in the source size; rescale to the output
    scale = np.array([train_size[1] / w, train_size[0] / h], np.float32)
    target = target * scale
    query = query * np.array([1.0, scale[1], scale[0]], np.float32)
  if vflip:
    crop = crop[:, ::-1]
    target = target * np.array([1.0, -1.0], np.float32)
    query = query * np.array([1.0, -1.0, 1.0], np.float32)
  return dict(video=(crop / 127.5 - 1.0).astype(np.float32), query_points=query.astype(np.float32),
              target_points=target.astype(np.float32), occluded=occluded, crop_window=window)


# ------------------------------------------------------------------------------------------------------
# Colour augmentation


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  r, g, b = np.moveaxis(rgb, -1, 0)
  v = rgb.max(-1)
  c = v - rgb.min(-1)
  s = np.where(v > 0, c / np.where(v > 0, v, 1), 0)
  safe = np.where(c > 0, c, 1)
  hue = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
  hue = np.where(c > 0, (hue / 6) % 1.0, 0)
  return np.stack([hue, s, v], -1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  h, s, v = np.moveaxis(hsv, -1, 0)
  i = np.floor(h * 6)
  f = h * 6 - i
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  i = i.astype(np.int64) % 6
  choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
  out = np.zeros(hsv.shape, hsv.dtype)
  for k, c in enumerate(choices):
    out = np.where((i == k)[..., None], c, out)
  return out


def color_augment(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Brightness, saturation, contrast and hue jitter (p = 0.8) then greyscale (p = 0.2); one draw per clip."""
  video = np.asarray(video, np.float32)
  if rng.uniform() < 0.8:
    v = (video + 1) / 2 + rng.uniform(-32 / 255, 32 / 255)
    hsv = _rgb_to_hsv(v)
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.4), 0, 1)
    v = _hsv_to_rgb(hsv)
    mean = v.mean(axis=(1, 2), keepdims=True)
    v = (v - mean) * rng.uniform(0.6, 1.4) + mean
    hsv = _rgb_to_hsv(np.clip(v, 0, None))
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-0.2, 0.2)) % 1.0
    video = np.clip(_hsv_to_rgb(hsv), 0, 1) * 2 - 1
  if rng.uniform() < 0.2:
    grey = video @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    video = np.repeat(grey[..., None], 3, axis=-1)
  return video.astype(np.float32)
