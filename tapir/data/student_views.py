"""The student's view of a clip for BootsTAP self-training: a spatial transform, corruptions, exact label maps.

The teacher tracks points on the clean clip; the student sees a transformed, corrupted copy, and the teacher's
labels must follow the same transform exactly (bootstap.md §3). `draw_view` draws one clip's transform and
corruption values, `render_view` makes the student clip, `map_points` / `map_queries` carry labels from teacher
raster pixels into student raster pixels, and `in_frame` is the out-of-frame rule (Kubric's: mapped targets
outside the view become occluded). Axes: t frames, h, w pixels, n points; primes mark the student frame.

Geometry (raster coordinates of `tapir.conventions`: (0, 0) the top-left pixel corner, centres at +0.5). The
student frame (h', w') shows a box of the teacher frame (h, w) with centre c, size (bw, bh), turned by an angle
theta about its centre and optionally mirrored. The student point p' = (x', y') shows the teacher point

    p = c + R(theta) diag(bw, bh) F (p' / (w', h') - 1/2),    F = diag(-1, 1) when flipped, else the identity,

an affine map per frame (`StudentView.inverse_affines`); its inverse, teacher -> student, is `StudentView.affines`.
Without rotation or flip it is the crop formula of §3 for the box [y0, x0, y1, x1]:
x' = (x - x0) w' / (x1 - x0), y' = (y - y0) h' / (y1 - y0). R acts on (x, y) with y pointing down, so a positive
angle turns the box clockwise on screen and the content appears turned anticlockwise in the student.

Rendering reads the teacher frame at the image of every student pixel centre (j + 0.5, i + 0.5) with
half-pixel-correct bilinear interpolation (index = raster - 0.5; not TF1's legacy resize). Reads outside the
teacher frame clamp to the nearest edge pixel; the sampler keeps the box inside the frame, so only the outer half
pixel (and the corners of a time-varying rotated box) ever clamp. When the view shrinks the content (s teacher
pixels per student pixel along a teacher axis, s > 1), the teacher frame is first box-filtered over s pixels along
that axis (area averaging, as an INTER_AREA resize; the bilinear read adds one teacher pixel of blur on top).
Symmetric filters keep affine images affine, so the coordinate-encoding test images stay exact. Zooms need none.

Corruptions follow in camera order: Kubric's colour augmentation (`tapir.data.kubric.color_augment`), Gaussian
blur, sensor noise and per-frame JPEG (both `tapir.data.synthetic.camera_effects`). Only pixels change.
"""

import dataclasses
import math
import numbers
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tapir.data.kubric import color_augment
from tapir.data.synthetic.camera_effects import apply_effects
from tapir.data.synthetic.camera_effects import EffectDraw

Range = tuple[float, float]
MOTION_PROFILES = ('linear', 'cosine')
_MAX_ATTEMPTS = 20  # box draws before the last is shrunk to fit the frame (Kubric's crop sampler also tries 20)
_BLUR_RADIUS_SIGMAS = 3.0  # Gaussian blur kernels are cut at 3 sigma
_MIN_PREFILTER_SCALE = 1.001  # below this shrink factor aliasing is negligible and the prefilter is skipped


@dataclasses.dataclass(frozen=True)
class StudentViewConfig:
  """What `draw_view` draws per clip. Ranges are (lo, hi), drawn uniformly (integers inclusive).

  Only the crop ranges have a source (the Kubric crop sampler, training spec §3.4); every other default is ours
  (bootstap.md §3, §8: mild corruptions, no flip, rotation or motion).

  Attributes:
    crop_area: share of the teacher frame's area the box covers, in (0, 1].
    crop_aspect: the box's w / h relative to the teacher frame's w / h (1: the frame's shape, so area 1 is the
      whole frame). Boxes that do not fit the frame are redrawn; after 20 tries the last one is shrunk to fit.
    flip_probability: chance of a horizontal mirror (one per clip).
    max_rotation_deg: the box turns by U[-max, max] degrees about its centre, in [0, 180].
    time_varying: False: one transform for the whole clip. True: the box's centre, size and angle move from a
      first draw towards a second one over the clip (the flip stays constant).
    max_box_motion: how far it moves, in [0, 1]: the last frame's transform is this fraction of the way from the
      first draw to an independent second draw (0: still; 1: all the way).
    motion_profile: 'linear' or 'cosine' (a half-cosine ease, zero speed at both ends).
    color_augmentation: apply Kubric's colour augmentation (itself random: jitter p = 0.8, greyscale p = 0.2).
    blur_probability: chance of a Gaussian blur of the student frames.
    blur_sigma: its standard deviation, student pixels.
    noise_probability: chance of additive Gaussian noise.
    noise_std: its standard deviation in [0, 1] intensity units (twice that in the clip's [-1, 1] units).
    jpeg_probability: chance of JPEG-like compression of every frame.
    jpeg_quality: libjpeg quality factor, integers in 1..100.
  """
  crop_area: Range = (0.3, 1.0)
  crop_aspect: Range = (0.5, 2.0)
  flip_probability: float = 0.0
  max_rotation_deg: float = 0.0
  time_varying: bool = False
  max_box_motion: float = 0.5
  motion_profile: str = 'cosine'
  color_augmentation: bool = True
  blur_probability: float = 0.3
  blur_sigma: Range = (0.0, 1.5)
  noise_probability: float = 0.3
  noise_std: Range = (0.0, 0.03)
  jpeg_probability: float = 0.3
  jpeg_quality: tuple[int, int] = (40, 95)

  def __post_init__(self):
    self._check_range('crop_area', 0, 1, open_low=True)
    self._check_range('crop_aspect', 0, math.inf, open_low=True)
    self._check_range('blur_sigma', 0, math.inf)
    self._check_range('noise_std', 0, 1)
    self._check_range('jpeg_quality', 1, 100, integers=True)
    for name, high in (('flip_probability', 1), ('blur_probability', 1), ('noise_probability', 1),
                       ('jpeg_probability', 1), ('max_box_motion', 1), ('max_rotation_deg', 180)):
      value = getattr(self, name)
      if not (_is_real(value) and 0 <= value <= high):
        raise ValueError(f'{name}={value!r} must be a number in [0, {high}]')
    for name in ('time_varying', 'color_augmentation'):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f'{name}={getattr(self, name)!r} must be a bool')
    if self.motion_profile not in MOTION_PROFILES:
      raise ValueError(f'motion_profile={self.motion_profile!r} must be one of {MOTION_PROFILES}')

  def _check_range(self, name: str, low: float, high: float, integers: bool = False, open_low: bool = False):
    value = getattr(self, name)
    if isinstance(value, list):  # configs often hold lists; the frozen dataclass keeps a tuple
      value = tuple(value)
      object.__setattr__(self, name, value)
    kind = _is_int if integers else _is_real
    if not (isinstance(value, tuple) and len(value) == 2 and all(kind(v) for v in value)
            and (low < value[0] if open_low else low <= value[0]) and value[0] <= value[1] <= high):
      numbers_of = 'integers' if integers else 'finite numbers'
      raise ValueError(f'{name}={value!r} must be a pair (lo, hi) of {numbers_of} with '
                       f'{low} {"<" if open_low else "<="} lo <= hi <= {high}')


def _is_int(x) -> bool:  # bools are not numbers here
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


class StudentView(NamedTuple):
  """One clip's student view: the per-frame maps and the drawn corruption values."""
  affines: np.ndarray  # [t, 2, 3] float32 teacher raster (x, y) -> student raster: A[:, :2] @ (x, y) + A[:, 2]
  inverse_affines: np.ndarray  # [t, 2, 3] float32 student raster -> teacher raster (what rendering samples)
  boxes: np.ndarray  # [t, 4] float32 (y0, x0, y1, x1) teacher raster box, before its rotation about the centre
  rotation_deg: np.ndarray  # [t] float32 the box's angle (positive: clockwise on screen)
  flip: bool  # mirrored horizontally
  blur_sigma: float = 0.0  # Gaussian blur, student pixels; 0: none
  noise_std: float = 0.0  # additive noise std, [0, 1] units; 0: none
  jpeg_quality: int = 0  # libjpeg quality 1..100; 0: no compression


def _check_hw(name: str, hw) -> tuple[int, int]:
  if not (isinstance(hw, (tuple, list)) and len(hw) == 2 and all(_is_int(v) and v > 0 for v in hw)):
    raise ValueError(f'{name}={hw!r} must be (height, width), positive integers')
  return int(hw[0]), int(hw[1])


def view_from_boxes(
    boxes: np.ndarray,  # [t, 4] (y0, x0, y1, x1) teacher raster pixels
    hw_student: tuple[int, int],
    rotation_deg: float | np.ndarray = 0.0,  # scalar or [t]: the box's angle about its centre
    flip: bool = False,
) -> StudentView:
  """The view that shows each frame's box (turned, mirrored) at `hw_student`, with no corruptions."""
  boxes = np.asarray(boxes, np.float64)
  if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.all(np.isfinite(boxes)):
    raise ValueError(f'boxes must be finite [t, 4] (y0, x0, y1, x1), got shape {boxes.shape}')
  y0, x0, y1, x1 = boxes.T
  if np.any(x1 <= x0) or np.any(y1 <= y0):
    raise ValueError(f'boxes must have y1 > y0 and x1 > x0, got {boxes}')
  h_s, w_s = _check_hw('hw_student', hw_student)
  angle = np.deg2rad(np.broadcast_to(np.asarray(rotation_deg, np.float64), y0.shape))
  cos, sin = np.cos(angle), np.sin(angle)
  sign = -1.0 if flip else 1.0
  # Columns of M = R diag(bw, bh) F diag(1 / w', 1 / h'): teacher displacement per student pixel along x', y'.
  col_x = np.stack([cos, sin], -1) * ((x1 - x0) * sign / w_s)[:, None]  # [t, 2]
  col_y = np.stack([-sin, cos], -1) * ((y1 - y0) / h_s)[:, None]
  centre = np.stack([x0 + x1, y0 + y1], -1) / 2
  offset = centre - (col_x * w_s + col_y * h_s) / 2  # the teacher point at student p' = 0
  inverse = np.stack([col_x, col_y, offset], -1)  # [t, 2, 3]
  forward_m = np.linalg.inv(inverse[:, :, :2])
  forward = np.concatenate([forward_m, -forward_m @ offset[..., None]], -1)
  return StudentView(forward.astype(np.float32), inverse.astype(np.float32), boxes.astype(np.float32),
                     np.rad2deg(angle).astype(np.float32), bool(flip))


def _draw_box(rng: np.random.Generator, config: StudentViewConfig, hw: tuple[int, int]) -> np.ndarray:
  """[5] float64 (cx, cy, bw, bh, angle_deg): a box whose turned footprint lies inside the (h, w) frame."""
  h, w = hw
  angle = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)
  cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
  for _ in range(_MAX_ATTEMPTS):
    area, aspect = rng.uniform(*config.crop_area), rng.uniform(*config.crop_aspect)
    bw, bh = w * math.sqrt(area * aspect), h * math.sqrt(area / aspect)
    extent_x, extent_y = cos * bw + sin * bh, sin * bw + cos * bh  # the turned box's axis-aligned extent
    if extent_x <= w and extent_y <= h:
      break
  else:
    shrink = min(w / extent_x, h / extent_y)
    bw, bh, extent_x, extent_y = bw * shrink, bh * shrink, extent_x * shrink, extent_y * shrink
  cx = rng.uniform(extent_x / 2, max(w - extent_x / 2, extent_x / 2))
  cy = rng.uniform(extent_y / 2, max(h - extent_y / 2, extent_y / 2))
  return np.array([cx, cy, bw, bh, angle])


def draw_view(rng: np.random.Generator, config: StudentViewConfig, num_frames: int, hw_teacher: tuple[int, int],
              hw_student: tuple[int, int]) -> StudentView:
  """Draws one clip's transform and corruption values (a pure function of the rng state and the arguments).

  Args:
    rng: numpy generator; the corruption values take its first 7 uniforms whatever the knobs, so changing a
      corruption knob leaves the geometry of a seed unchanged.
    config: the knobs.
    num_frames: t.
    hw_teacher: (h, w) of the clip the teacher sees (the labels' raster).
    hw_student: (h', w') of the student's clip.
  Returns:
    a `StudentView` with [t, ...] maps.
  """
  if not isinstance(config, StudentViewConfig):
    raise ValueError(f'config must be a StudentViewConfig, got {type(config).__name__}')
  if not (_is_int(num_frames) and num_frames > 0):
    raise ValueError(f'num_frames={num_frames!r} must be a positive integer')
  hw_teacher = _check_hw('hw_teacher', hw_teacher)
  u = rng.random(7)
  lerp = lambda bounds, x: float(bounds[0] + x * (bounds[1] - bounds[0]))
  low_q, high_q = config.jpeg_quality
  corruptions = dict(
      blur_sigma=lerp(config.blur_sigma, u[1]) if u[0] < config.blur_probability else 0.0,
      noise_std=lerp(config.noise_std, u[3]) if u[2] < config.noise_probability else 0.0,
      jpeg_quality=min(int(low_q + u[5] * (high_q - low_q + 1)), high_q) if u[4] < config.jpeg_probability else 0)
  flip = bool(u[6] < config.flip_probability)
  params = _draw_box(rng, config, hw_teacher)[None]  # [1, 5]
  if config.time_varying and num_frames > 1:
    end = params + config.max_box_motion * (_draw_box(rng, config, hw_teacher) - params)
    s = np.arange(num_frames) / (num_frames - 1)
    if config.motion_profile == 'cosine':
      s = (1 - np.cos(np.pi * s)) / 2
    params = params + s[:, None] * (end - params)  # [t, 5]
  params = np.broadcast_to(params, (num_frames, 5))
  cx, cy, bw, bh, angle = params.T
  boxes = np.stack([cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2], -1)
  return view_from_boxes(boxes, hw_student, angle, flip)._replace(**corruptions)


def render_view(
    video: np.ndarray,  # [t, h, w, 3] float32 in [-1, 1], the teacher's clip
    view: StudentView,
    rng: np.random.Generator,  # colour augmentation and noise draw from it (None will do when both are off)
    config: StudentViewConfig,  # only `color_augmentation` is read: the other draws are in `view`
    hw_student: tuple[int, int],
) -> np.ndarray:  # [t, h', w', 3] float32, in [-1, 1] when `video` is
  """The student's clip: `video` resampled through the view's transform (see the module docstring), then the
  corruptions. With corruptions off (no colour augmentation, zero blur, noise and JPEG) the identity view returns
  `video` bit for bit."""
  video = np.asarray(video, np.float32)
  if video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape:
    raise ValueError(f'video must be [t, h, w, 3] with t, h, w > 0, got shape {video.shape}')
  if view.inverse_affines.shape != (video.shape[0], 2, 3):
    raise ValueError(f'view has maps for {view.inverse_affines.shape[0]} frames but video has {video.shape[0]}')
  hw_student = _check_hw('hw_student', hw_student)
  out = _resample(video, view.inverse_affines, hw_student)
  if config.color_augmentation:
    out = color_augment(out, rng)
  if view.blur_sigma > 0:
    out = _gaussian_blur(out, view.blur_sigma)
  if view.noise_std > 0 or view.jpeg_quality:
    unit = apply_effects((out + 1) * np.float32(0.5), None, None,
                         EffectDraw(read_noise=float(view.noise_std), jpeg_quality=int(view.jpeg_quality)), rng)
    out = unit * np.float32(2) - np.float32(1)
  return out.astype(np.float32, copy=False)


def _resample(video: np.ndarray, inverse: np.ndarray, hw_student: tuple[int, int]) -> np.ndarray:
  """Anti-aliased, edge-clamped bilinear reads of video [t, h, w, c] at inverse [t, 2, 3] (student pixel centres)."""
  t, h, w, c = video.shape
  h_s, w_s = hw_student
  # Teacher pixels per student pixel along the teacher's x and y axes: the norms of the rows of M.
  scales = np.hypot(inverse[:, :, 0], inverse[:, :, 1]).astype(np.float64)  # [t, 2] (x, y)
  if np.all(scales == scales[:1]):  # one filter for the whole clip
    video = _area_prefilter(video, *scales[0])
  else:
    video = np.stack([_area_prefilter(frame[None], *s)[0] for frame, s in zip(video, scales)])
  cols = np.arange(w_s, dtype=np.float32) + np.float32(0.5)  # student pixel centres
  rows = np.arange(h_s, dtype=np.float32)[:, None] + np.float32(0.5)
  a = inverse.astype(np.float32)[:, :, :, None, None]  # [t, 2, 3, 1, 1]
  coords = []
  for axis, size in ((0, w), (1, h)):
    index = a[:, axis, 0] * cols + a[:, axis, 1] * rows + (a[:, axis, 2] - np.float32(0.5))  # [t, h', w']
    np.clip(index, 0, size - 1, out=index)  # edge clamp
    low = np.floor(index)
    coords.append((low.astype(np.intp), (index - low)[..., None]))
  (x0, fx), (y0, fy) = coords
  x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
  start = (np.arange(t) * (h * w))[:, None, None]
  flat = video.reshape(-1, c)
  top_row, bottom_row = start + y0 * w, start + y1 * w
  top = flat[top_row + x0]
  top += fx * (flat[top_row + x1] - top)
  bottom = flat[bottom_row + x0]
  bottom += fx * (flat[bottom_row + x1] - bottom)
  top += fy * (bottom - top)
  return top


def _area_prefilter(frames: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
  """frames [t, h, w, c] box-filtered over `scale` pixels along each axis that shrinks (scale > 1)."""
  for axis, scale in ((2, scale_x), (1, scale_y)):
    if scale > _MIN_PREFILTER_SCALE:
      radius = math.ceil((scale - 1) / 2)
      taps = np.arange(-radius, radius + 1, dtype=np.float64)
      overlap = np.minimum(taps + 0.5, scale / 2) - np.maximum(taps - 0.5, -scale / 2)  # cells inside the box
      frames = _filter_axis(frames, np.clip(overlap, 0, None) / scale, axis)
  return frames


def _gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
  """frames [t, h, w, c] blurred by a separable Gaussian of `sigma` pixels (edge padded)."""
  radius = max(1, math.ceil(_BLUR_RADIUS_SIGMAS * sigma))
  taps = np.arange(-radius, radius + 1, dtype=np.float64)
  weights = np.exp(-0.5 * (taps / sigma) ** 2)
  weights /= weights.sum()
  return _filter_axis(_filter_axis(frames, weights, 1), weights, 2)


def _filter_axis(frames: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
  """Correlates `axis` of frames with the symmetric 1-D `weights` [2 r + 1], edge padded (sum of shifted views)."""
  radius = len(weights) // 2
  pad = [(0, 0)] * frames.ndim
  pad[axis] = (radius, radius)
  padded = np.pad(frames, pad, mode='edge')
  size = frames.shape[axis]
  out = np.zeros_like(frames)
  for k, weight in enumerate(weights.astype(np.float32)):
    if weight:
      out += weight * padded[(slice(None),) * axis + (slice(k, k + size),)]
  return out


def map_points(affines, xy):
  """Teacher raster (x, y) -> student raster (x', y') at each frame. numpy or jax.numpy (jit-safe).

  Args:
    affines: [..., t, 2, 3] `StudentView.affines`; the leading axes broadcast against those of `xy` (for a batch
      of clips [b, t, 2, 3] and tracks [b, n, t, 2] pass `affines[:, None]`).
    xy: [..., t, 2] (x, y) per frame, e.g. tracks [n, t, 2].
  Returns:
    [..., t, 2] (x', y'), the broadcast shape.
  """
  if affines.shape[-2:] != (2, 3) or xy.shape[-1] != 2 or xy.shape[-2] != affines.shape[-3]:
    raise ValueError(f'affines must be [..., t, 2, 3] and xy [..., t, 2] with the same t, got {affines.shape} '
                     f'and {xy.shape}')
  return xy[..., 0:1] * affines[..., 0] + xy[..., 1:2] * affines[..., 1] + affines[..., 2]


def map_queries(affines, query_points):
  """Query points (t, y, x) in teacher raster pixels -> (t, y', x') in student pixels, each by its own frame's map.

  Args:
    affines: [..., t, 2, 3]; leading axes broadcast against those of `query_points` (pass `affines[:, None]` for
      [b, t, 2, 3] with [b, n, 3]).
    query_points: [..., n, 3] (t, y, x); t must be an integral frame index in [0, t) (numpy checks; under jit
      an out-of-range t maps to (0, 0)).
  Returns:
    [..., n, 3] (t, y', x'), t unchanged. numpy or jax.numpy (jit-safe).
  """
  if affines.shape[-2:] != (2, 3) or query_points.shape[-1] != 3:
    raise ValueError(f'affines must be [..., t, 2, 3] and query_points [..., 3], got {affines.shape} and '
                     f'{query_points.shape}')
  num_frames = affines.shape[-3]
  xp = jnp if isinstance(affines, jax.Array) or isinstance(query_points, jax.Array) else np
  frame = query_points[..., 0]
  if xp is np and not np.all((frame == np.round(frame)) & (frame >= 0) & (frame < num_frames)):
    raise ValueError(f'query_points frames must be integers in [0, {num_frames}), got {frame}')
  one_hot = (frame[..., None] == xp.arange(num_frames, dtype=frame.dtype)).astype(affines.dtype)  # [..., n, t]
  a = (one_hot[..., None, None] * affines).sum(axis=-3)  # [..., n, 2, 3], exact: one non-zero term
  y, x = query_points[..., 1], query_points[..., 2]
  mapped_x = a[..., 0, 0] * x + a[..., 0, 1] * y + a[..., 0, 2]
  mapped_y = a[..., 1, 0] * x + a[..., 1, 1] * y + a[..., 1, 2]
  return xp.stack([frame, mapped_y, mapped_x], axis=-1)


def in_frame(xy, hw: Sequence[int]):
  """[..., 2] (x, y) raster pixels -> [...] bool: 0 <= x < w and 0 <= y < h (Kubric's out-of-frame rule)."""
  h, w = hw
  x, y = xy[..., 0], xy[..., 1]
  return (x >= 0) & (x < w) & (y >= 0) & (y < h)
