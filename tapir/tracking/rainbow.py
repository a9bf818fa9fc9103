"""The "rainbow" view: trails drawn in camera-compensated coordinates, so they show motion through the scene.

Under a moving camera every point moves in the image, and ordinary trails (`paint.paint_tracks`) mostly draw the
camera's motion. Here that motion is estimated from the tracks themselves: for each frame f a homography H_f maps
frame-f pixels onto a reference frame's, fitted by RANSAC (a normalised DLT solver, numpy only) on the points
visible in both frames. A point's compensated position in frame s is H_s x_s. Frame f draws its trail through the
frames s <= f at H_f^-1 H_s x_s: the scene positions it went through, seen from where the camera is at frame f.
A static scene point keeps one compensated position, so its trail collapses onto its dot; a moving object draws
the path it takes through the scene.

    homographies = rainbow.estimate_background_homographies(tracks, visible)   # [t, 3, 3] frame f -> reference
    foreground = rainbow.split_foreground(tracks, visible, homographies)       # [n] bool
    painted = rainbow.paint_rainbow(frames, tracks, visible)                   # uint8 [t, h, w, 3]

Shapes: n points, t frames, h x w pixels, k trail frames, m correspondences. Points are (x, y) raster pixels
(`tapir.conventions`); a homography acts on columns (x, y, 1): x' ~ H (x, y, 1)^T, scaled so H[2, 2] = 1. One
homography describes the background exactly when the camera only turns about its centre (pan, tilt, zoom) or the
background is a plane; with parallax it is the dominant motion RANSAC finds, and near points leave short trails.
"""

import numbers

from absl import logging
import numpy as np

from tapir.tracking import paint

RANSAC_THRESHOLD_PX = 2.0  # a correspondence fits a frame's background motion within this error (~a tracker's error)
FOREGROUND_THRESHOLD_PX = 3.0  # above the RANSAC threshold, so that tracking noise alone does not make foreground
FOREGROUND_QUANTILE = 0.75  # foreground: off its scene position on a quarter of its frames (see split_foreground)
RANSAC_ITERATIONS = 256  # with half the points outliers, P(no clean 4-sample) = (15/16)^256 < 1e-7
MIN_POINTS = 8  # a fit needs this many inliers; with fewer the frame is chained through its neighbour
_SAMPLE_SIZE = 4  # the minimal sample of a homography


# ------------------------------------------------------------------------------------------------------
# Input checks (public functions only)


def _check_number(name: str, value, minimum: float, integer: bool = False, strict: bool = True):
  kind = numbers.Integral if integer else numbers.Real
  if isinstance(value, bool) or not isinstance(value, kind) or not np.isfinite(value) or (
      value <= minimum if strict else value < minimum):
    raise ValueError(f'{name} must be a finite {"integer" if integer else "number"} {">" if strict else ">="} '
                     f'{minimum}; got {value!r}')
  return value


def _check_points(name: str, points) -> np.ndarray:  # [..., 2] float64
  points = np.asarray(points)
  if points.dtype == bool or not (np.issubdtype(points.dtype, np.floating) or np.issubdtype(points.dtype, np.integer)):
    raise ValueError(f'{name} must hold real numbers; got dtype {points.dtype}')
  if points.ndim < 1 or points.shape[-1] != 2:
    raise ValueError(f'{name} must be [..., 2] (x, y); got shape {points.shape}')
  return points.astype(np.float64)


def _check_tracks(tracks, visible) -> tuple[np.ndarray, np.ndarray]:  # [n, t, 2] float64, [n, t] bool
  tracks = _check_points('tracks', tracks)
  if tracks.ndim != 3 or tracks.shape[1] < 1:
    raise ValueError(f'tracks must be [n, t, 2] with t >= 1; got shape {tracks.shape}')
  visible = np.asarray(visible)
  if visible.dtype != bool:
    raise ValueError(f'visible must be bool; got dtype {visible.dtype}')
  if visible.shape != tracks.shape[:2]:
    raise ValueError(f'visible must be [n, t] = {tracks.shape[:2]} like tracks; got shape {visible.shape}')
  return tracks, visible & np.isfinite(tracks).all(-1)


def _check_homographies(homographies, t: int) -> np.ndarray:  # [t, 3, 3] float64
  h = np.asarray(homographies)
  if h.dtype == bool or not np.issubdtype(h.dtype, np.number) or np.iscomplexobj(h) or h.shape != (t, 3, 3):
    raise ValueError(f'homographies must be real [t, 3, 3] = [{t}, 3, 3]; got {h.dtype} {h.shape}')
  h = h.astype(np.float64)
  if not np.isfinite(h).all() or (np.abs(np.linalg.det(h)) <= 1e-12 * np.abs(h).max((1, 2))**3).any():
    raise ValueError('homographies must be finite and invertible')
  return h


def _check_frame_index(name: str, value, t: int) -> int:
  _check_number(name, value, 0, integer=True, strict=False)
  if value >= t:
    raise ValueError(f'{name} must be < t = {t}; got {value}')
  return int(value)


# ------------------------------------------------------------------------------------------------------
# Homographies: normalised DLT and RANSAC


def apply_homography(homography: np.ndarray,  # [..., 3, 3], broadcast against the points' leading axes
                     points: np.ndarray) -> np.ndarray:  # [..., m, 2] (x, y) -> [..., m, 2]; NaN at infinity
  """Maps points through homographies (x' ~ H (x, y, 1)); points sent to infinity come back NaN."""
  points = _check_points('points', points)
  if points.ndim < 2:
    raise ValueError(f'points must be [..., m, 2]; got shape {points.shape}')
  homography = np.asarray(homography)
  if homography.dtype == bool or not np.issubdtype(homography.dtype, np.number) or np.iscomplexobj(
      homography) or homography.shape[-2:] != (3, 3):
    raise ValueError(f'homography must be real [..., 3, 3]; got {homography.dtype} {homography.shape}')
  try:
    np.broadcast_shapes(homography.shape[:-2], points.shape[:-2])
  except ValueError:
    raise ValueError(f'homography {homography.shape} and points {points.shape} do not broadcast') from None
  return _apply(homography.astype(np.float64), points)


def _apply(homography: np.ndarray, points: np.ndarray) -> np.ndarray:  # apply_homography, unchecked
  mapped = np.einsum('...ij,...mj->...mi', homography[..., :, :2], points) + homography[..., None, :, 2]
  w = mapped[..., 2:]
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(np.abs(w) > 1e-12, mapped[..., :2] / w, np.nan)


def _normaliser(points: np.ndarray) -> np.ndarray:  # [b, m, 2] -> [b, 3, 3]
  """Hartley's conditioning: centroid to the origin, mean distance sqrt(2)."""
  mean = points.mean(-2)  # [b, 2]
  spread = np.linalg.norm(points - mean[:, None], axis=-1).mean(-1)  # [b]
  scale = np.sqrt(2) / np.maximum(spread, 1e-12)
  t = np.zeros(points.shape[:-2] + (3, 3))
  t[:, 0, 0] = t[:, 1, 1] = scale
  t[:, :2, 2] = -scale[:, None] * mean
  t[:, 2, 2] = 1
  return t


def _dlt(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Batched normalised DLT: src, dst [b, m, 2], m >= 4 -> H [b, 3, 3] (src -> dst), well-posed [b] bool."""
  t_src, t_dst = _normaliser(src), _normaliser(dst)
  x, y = np.moveaxis(_apply(t_src, src), -1, 0)  # [b, m] each
  u, v = np.moveaxis(_apply(t_dst, dst), -1, 0)
  zero, one = np.zeros_like(x), np.ones_like(x)
  rows_u = np.stack([-x, -y, -one, zero, zero, zero, u * x, u * y, u], -1)  # [b, m, 9]
  rows_v = np.stack([zero, zero, zero, -x, -y, -one, v * x, v * y, v], -1)
  a = np.concatenate([rows_u, rows_v], 1)  # [b, 2m, 9]
  if a.shape[1] < 9:  # a zero row leaves the solution alone and gives the SVD a full 9 x 9 V
    a = np.concatenate([a, np.zeros((a.shape[0], 9 - a.shape[1], 9))], 1)
  _, s, vt = np.linalg.svd(a, full_matrices=False)
  h = vt[:, -1].reshape(-1, 3, 3)  # unit norm
  # Degenerate: a null space of 2+ dimensions (e.g. three collinear points on both sides), or a singular
  # solution (e.g. collinear points sent to non-collinear ones, which no homography does).
  well_posed = (s[:, -2] > 1e-9 * s[:, 0]) & (np.abs(np.linalg.det(h)) > 1e-9)
  h = np.linalg.solve(t_dst, h @ t_src)
  corner = h[:, 2:, 2:]
  scale = np.where(np.abs(corner) > 1e-12 * np.linalg.norm(h, axis=(1, 2))[:, None, None], corner,
                   np.linalg.norm(h, axis=(1, 2))[:, None, None])
  return h / scale, well_posed & np.isfinite(h).all((1, 2))


def _errors(h: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:  # [b, 3, 3], [m, 2] x2 -> [b, m]
  error = np.linalg.norm(_apply(h, src[None]) - dst, axis=-1)
  return np.where(np.isfinite(error), error, np.inf)


def fit_homography(src: np.ndarray,  # [m, 2] (x, y), m >= 4
                   dst: np.ndarray) -> np.ndarray:  # [m, 2] -> [3, 3] with dst ~ H src
  """Least-squares homography (normalised DLT) through all the given correspondences."""
  src, dst = _check_points('src', src), _check_points('dst', dst)
  if src.ndim != 2 or src.shape != dst.shape or len(src) < _SAMPLE_SIZE:
    raise ValueError(f'src and dst must both be [m, 2] with m >= 4; got {src.shape} and {dst.shape}')
  h, ok = _dlt(src[None], dst[None])
  if not ok[0]:
    raise ValueError('src is degenerate (collinear or repeated points): no unique homography')
  return h[0]


def _ransac(src, dst, threshold_px, num_iterations, rng) -> tuple[np.ndarray | None, np.ndarray]:
  """MSAC over minimal samples, then refits on the inliers until they stop changing. None if all degenerate."""
  m = len(src)
  samples = rng.random((num_iterations, m)).argpartition(_SAMPLE_SIZE - 1, axis=1)[:, :_SAMPLE_SIZE]  # distinct
  h, ok = _dlt(src[samples], dst[samples])
  if not ok.any():
    return None, np.zeros(m, bool)
  cost = (np.minimum(_errors(h, src, dst), threshold_px)**2).sum(-1)  # truncated squared errors
  best = h[np.argmin(np.where(ok, cost, np.inf))]  # ties: the first sample, so runs repeat exactly
  inliers = _errors(best[None], src, dst)[0] < threshold_px
  for _ in range(5):
    if inliers.sum() < _SAMPLE_SIZE:
      break
    refit, ok = _dlt(src[inliers][None], dst[inliers][None])
    if not ok[0]:
      break
    best = refit[0]
    again = _errors(best[None], src, dst)[0] < threshold_px
    if (again == inliers).all():
      break
    inliers = again
  return best, inliers


def ransac_homography(src: np.ndarray,  # [m, 2] (x, y), m >= 4
                      dst: np.ndarray,  # [m, 2]
                      threshold_px: float = RANSAC_THRESHOLD_PX,
                      num_iterations: int = RANSAC_ITERATIONS,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # [3, 3], inliers [m] bool
  """Robust homography dst ~ H src: the minimal sample with the lowest truncated error, refitted on its inliers
  (correspondences whose transfer error |H src - dst| is below `threshold_px`). Deterministic given `seed`."""
  src, dst = _check_points('src', src), _check_points('dst', dst)
  if src.ndim != 2 or src.shape != dst.shape or len(src) < _SAMPLE_SIZE:
    raise ValueError(f'src and dst must both be [m, 2] with m >= 4; got {src.shape} and {dst.shape}')
  if not (np.isfinite(src).all() and np.isfinite(dst).all()):
    raise ValueError('src and dst must be finite')
  _check_number('threshold_px', threshold_px, 0)
  _check_number('num_iterations', num_iterations, 1, integer=True, strict=False)
  _check_number('seed', seed, 0, integer=True, strict=False)
  h, inliers = _ransac(src, dst, threshold_px, num_iterations, np.random.default_rng(seed))
  if h is None:
    raise ValueError('src is degenerate (collinear or repeated points): no unique homography')
  return h, inliers


# ------------------------------------------------------------------------------------------------------
# Background motion and the foreground split


def estimate_background_homographies(tracks: np.ndarray,  # [n, t, 2] (x, y) pixels
                                     visible: np.ndarray,  # [n, t] bool
                                     reference_frame: int | None = None,
                                     threshold_px: float = RANSAC_THRESHOLD_PX,
                                     num_iterations: int = RANSAC_ITERATIONS,
                                     min_points: int = MIN_POINTS,
                                     seed: int = 0) -> np.ndarray:  # [t, 3, 3] frame f -> reference pixels
  """Per frame f, the RANSAC homography from frame f's pixels to the reference frame's (t // 2 if None).

  Fitted on the points visible (and finite) in both frames. A frame whose fit to the reference has fewer than
  `min_points` inliers (too few common points, or degenerate ones) is fitted to its neighbour towards the
  reference instead and chained through that neighbour's homography; failing that too, it takes the
  neighbour's homography (a warning is logged). Frame f's RANSAC is seeded with (seed, f), so the result does
  not depend on the order of fitting.
  """
  tracks, visible = _check_tracks(tracks, visible)
  t = tracks.shape[1]
  reference = t // 2 if reference_frame is None else _check_frame_index('reference_frame', reference_frame, t)
  _check_number('threshold_px', threshold_px, 0)
  _check_number('num_iterations', num_iterations, 1, integer=True, strict=False)
  _check_number('min_points', min_points, _SAMPLE_SIZE, integer=True, strict=False)
  _check_number('seed', seed, 0, integer=True, strict=False)

  def fit(f: int, g: int) -> np.ndarray | None:  # frame f -> frame g
    common = visible[:, f] & visible[:, g]
    if common.sum() < min_points:
      return None
    rng = np.random.default_rng([seed, f])
    h, inliers = _ransac(tracks[common, f], tracks[common, g], threshold_px, num_iterations, rng)
    return h if inliers.sum() >= min_points else None

  homographies = np.tile(np.eye(3), (t, 1, 1))
  for f in sorted(range(t), key=lambda f: (abs(f - reference), f)):
    if f == reference:
      continue
    neighbour = f + 1 if f < reference else f - 1  # already done: it is nearer the reference
    h = fit(f, reference)
    if h is None:
      step = fit(f, neighbour) if neighbour != reference else None
      if step is None:
        logging.warning('rainbow: frame %d shares too few usable points with frame %d (or %d); it gets frame '
                        '%d\'s background motion', f, reference, neighbour, neighbour)
        step = np.eye(3)
      h = homographies[neighbour] @ step
      h = h / h[2, 2] if abs(h[2, 2]) > 1e-12 else h / np.linalg.norm(h)
    homographies[f] = h
  return homographies


def compensate_tracks(tracks: np.ndarray,  # [n, t, 2] (x, y) pixels
                      homographies: np.ndarray) -> np.ndarray:  # [t, 3, 3] -> [n, t, 2] reference pixels
  """Each frame's positions mapped into the reference frame: H_f x_f (NaN where not finite)."""
  tracks = _check_points('tracks', tracks)
  if tracks.ndim != 3:
    raise ValueError(f'tracks must be [n, t, 2]; got shape {tracks.shape}')
  homographies = _check_homographies(homographies, tracks.shape[1])
  return np.swapaxes(_apply(homographies, np.swapaxes(tracks, 0, 1)), 0, 1)


def split_foreground(tracks: np.ndarray,  # [n, t, 2] (x, y) pixels
                     visible: np.ndarray,  # [n, t] bool
                     homographies: np.ndarray,  # [t, 3, 3] frame f -> reference pixels
                     threshold_px: float = FOREGROUND_THRESHOLD_PX) -> np.ndarray:  # [n] bool, True: foreground
  """Points that move through the scene: the residual under the background motion is large over their frames.

  A point's scene position is the median of its compensated positions H_f x_f over its visible frames; it is
  foreground if it lies more than `threshold_px` (reference pixels) from there on at least a quarter of them
  (FOREGROUND_QUANTILE of the residuals): bad frames up to that share do not make a static point foreground,
  and an object moving steadily along a path of length L is found once 0.375 L > threshold_px. Points visible
  in fewer than 2 frames are background.
  """
  tracks, visible = _check_tracks(tracks, visible)
  _check_number('threshold_px', threshold_px, 0)
  compensated = compensate_tracks(tracks, homographies)  # [n, t, 2]
  usable = visible & np.isfinite(compensated).all(-1)  # [n, t]
  counts = usable.sum(1)  # [n]
  some = counts > 0
  masked = np.where(usable[..., None], compensated, np.nan)[some]
  centre = np.nanmedian(masked, axis=1)  # [n', 2]
  residual = np.linalg.norm(masked - centre[:, None], axis=-1)  # [n', t], NaN off the usable frames
  foreground = np.zeros(len(tracks), bool)
  foreground[some] = np.nanquantile(residual, FOREGROUND_QUANTILE, axis=1) > threshold_px
  return foreground & (counts >= 2)


# ------------------------------------------------------------------------------------------------------
# Drawing


def rainbow_trails(tracks: np.ndarray,  # [n, t, 2] (x, y) pixels
                   homographies: np.ndarray,  # [t, 3, 3] frame f -> reference pixels
                   frame: int,
                   trail: int) -> np.ndarray:  # [n, k, 2], k = min(trail, frame) + 1, the current frame last
  """What frame `frame` draws: positions of frames s = frame - k + 1 .. frame at H_frame^-1 H_s x_s."""
  tracks = _check_points('tracks', tracks)
  if tracks.ndim != 3:
    raise ValueError(f'tracks must be [n, t, 2]; got shape {tracks.shape}')
  t = tracks.shape[1]
  homographies = _check_homographies(homographies, t)
  frame = _check_frame_index('frame', frame, t)
  _check_number('trail', trail, 0, integer=True, strict=False)
  return _trails(tracks, homographies, frame, trail)


def _trails(tracks, homographies, frame, trail):
  start = max(0, frame - trail)
  to_frame = np.linalg.solve(homographies[frame][None], homographies[start:frame + 1])  # [k, 3, 3]: s -> frame
  return np.swapaxes(_apply(to_frame, np.swapaxes(tracks[:, start:frame + 1], 0, 1)), 0, 1)


def paint_rainbow(frames: np.ndarray,  # [t, h, w, 3] uint8
                  tracks: np.ndarray,  # [n, t, 2] (x, y) pixels of `frames`
                  visible: np.ndarray,  # [n, t] bool
                  homographies: np.ndarray | None = None,  # [t, 3, 3] frame f -> reference pixels
                  foreground: np.ndarray | None = None,  # [n] bool
                  colors: np.ndarray | None = None,  # [n, 3] uint8
                  trail: int | None = None,
                  radius: float | None = None,
                  show_background: bool = True,
                  seed: int = 0) -> np.ndarray:  # [t, h, w, 3] uint8
  """Draws the camera-compensated trails (`rainbow_trails`) and dots of the visible points on a copy of `frames`.

  Args:
    frames: uint8 [t, h, w, 3].
    tracks: [n, t, 2] (x, y) raster pixels of `frames`; non-finite positions are never drawn.
    visible: [n, t] bool; occluded points are not drawn in that frame.
    homographies: [t, 3, 3] background motion; `estimate_background_homographies(tracks, visible, seed=seed)`
      if None.
    foreground: [n] bool; `split_foreground` with the homographies if None. Foreground points are drawn over
      background ones.
    colors: uint8 [n, 3]; `paint.rainbow_colors` of each point's first visible position if None.
    trail: past frames a trail reaches back (fading with age, as in `paint.paint_frame`); the whole clip if None.
    radius: dot radius in whole pixels; `paint.default_radius` if None.
    show_background: False leaves out the background points (only the foreground is drawn).
    seed: RANSAC seed when the homographies are estimated here.
  Returns:
    uint8 [t, h, w, 3].
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'frames must be uint8 [t, h, w, 3]; got {frames.dtype} {frames.shape}')
  tracks, visible = _check_tracks(tracks, visible)
  n, t = visible.shape
  if t != frames.shape[0]:
    raise ValueError(f'tracks and visible must have t = {frames.shape[0]} frames like frames; got {t}')
  trail = t - 1 if trail is None else _check_number('trail', trail, 0, integer=True, strict=False)
  if radius is not None:
    _check_number('radius', radius, 0)
  if homographies is None:
    homographies = estimate_background_homographies(tracks, visible, seed=seed)
  homographies = _check_homographies(homographies, t)
  if foreground is None:
    foreground = split_foreground(tracks, visible, homographies)
  foreground = np.asarray(foreground)
  if foreground.dtype != bool or foreground.shape != (n,):
    raise ValueError(f'foreground must be bool [n] = [{n}]; got {foreground.dtype} {foreground.shape}')
  if colors is None:
    first = np.argmax(visible, axis=1)  # [n]
    start = np.nan_to_num(tracks[np.arange(n), first])  # [n, 2] (x, y)
    colors = paint.rainbow_colors(start[:, ::-1], frames.shape[1:3])
  colors = np.asarray(colors)
  if colors.dtype != np.uint8 or colors.shape != (n, 3):
    raise ValueError(f'colors must be uint8 [n, 3] = [{n}, 3]; got {colors.dtype} {colors.shape}')

  order = np.argsort(foreground, kind='stable')  # background first, so the foreground lies on top
  if not show_background:
    order = order[foreground[order]]
  tracks, visible, colors = tracks[order], visible[order], colors[order]
  far = 4 * max(frames.shape[1:3])  # positions mapped this far off the frame are not drawn
  out = np.empty_like(frames)
  for f in range(t):
    start = max(0, f - trail)
    positions = _trails(tracks, homographies, f, trail)  # [n', k, 2]
    positions[(np.abs(positions) > far).any(-1)] = np.nan
    out[f] = paint.paint_frame(frames[f], positions, visible[:, start:f + 1], colors, trail, radius)
  return out

