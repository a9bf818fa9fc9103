"""Drawing tracks on videos with numpy and PIL (no matplotlib, no TensorFlow).

    colors = viz.rainbow_colors(query_points, video.shape[1:3])         # [n, 3] uint8
    painted = viz.paint_tracks(video, tracks, visible, colors)          # uint8 [t, h, w, 3]
    viz.save_image('sheet.png', viz.contact_sheet(painted[::4], columns=4))

Coordinates follow `tapir.conventions`: a point at (x, y) lies in pixel (row floor(y), column floor(x)); its dot
is a disc of whole pixels centred on that pixel (no anti-aliasing). `ImageDraw` addresses pixels by integer index
(a shape's bounding box includes both end pixels), so raster coordinates are shifted by -0.5 for it.
"""

import collections
import colorsys
import os
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

_GOLDEN_RATIO = 0.618033988749895  # hue step that keeps consecutive colours far apart on the wheel
_OCCLUDED_MODES = ('hide', 'hollow')


def point_colors(n: int, seed: int | None = None) -> np.ndarray:  # [n, 3] uint8
  """`n` distinct saturated colours: hues stepped by the golden ratio around the HSV wheel.

  With `seed`, the wheel starts at a random hue and the order is shuffled (same seed, same colours).
  """
  start, order = 0.0, np.arange(n)
  if seed is not None:
    rng = np.random.default_rng(seed)
    start, order = rng.uniform(), rng.permutation(n)
  hues = (start + order * _GOLDEN_RATIO) % 1.0
  values = 1.0 - 0.25 * ((order // 7) % 2)  # alternate brightness so close hues stay distinguishable
  rgb = [colorsys.hsv_to_rgb(h, 0.85, v) for h, v in zip(hues, values)]
  return np.round(np.asarray(rgb, np.float64).reshape(n, 3) * 255).astype(np.uint8)


def rainbow_colors(query_points: np.ndarray,  # [n, 3] (t, y, x) or [n, 2] (y, x), pixels
                   frame_hw: Sequence[int]) -> np.ndarray:  # [n, 3] uint8
  """Colours by query position (the "rainbow" view): hue from x, lightness and saturation from y.

  Neighbouring points get similar colours, so coherent motion shows as smooth colour fields and tracking
  failures stand out.
  """
  q = np.asarray(query_points, np.float64)
  h, w = frame_hw
  y, x = np.clip(q[:, -2] / h, 0, 1), np.clip(q[:, -1] / w, 0, 1)
  hue = 0.85 * x  # stop short of the wheel's end so the left and right edges differ
  lightness = 0.3 + 0.4 * y
  saturation = 1.0 - 0.3 * y
  rgb = [colorsys.hls_to_rgb(a, b, c) for a, b, c in zip(hue, lightness, saturation)]
  return np.round(np.asarray(rgb, np.float64).reshape(-1, 3) * 255).astype(np.uint8)


def default_radius(frame_hw: Sequence[int]) -> int:
  """Dot radius in pixels for a frame size: 2 px at 256x256 and below, 8 px at 1080p."""
  return max(2, int(round(min(frame_hw) / 128)))


def paint_tracks(video: np.ndarray,  # [t, h, w, 3] uint8
                 tracks: np.ndarray,  # [n, t, 2] (x, y) pixels of `video`
                 visible: np.ndarray,  # [n, t] bool
                 colors: np.ndarray | None = None,  # [n, 3] uint8
                 trail: int = 8,
                 radius: float | None = None,
                 occluded: str = 'hide') -> np.ndarray:  # [t, h, w, 3] uint8
  """Draws tracks on a copy of `video`.

  Each frame gets a filled dot at every visible point, and a trail through its positions over the last `trail`
  frames that fades with age (segments join consecutive visible positions). Points that are occluded in the
  frame are left out (`occluded='hide'`: nothing of that point is drawn in that frame) or drawn as hollow circles
  (`'hollow'`, with their trail).

  Args:
    video: uint8 [t, h, w, 3].
    tracks: [n, t, 2] (x, y) raster pixels of `video`; non-finite positions are never drawn.
    visible: [n, t] bool.
    colors: uint8 [n, 3]; `point_colors(n)` if None.
    trail: number of past frames the trail reaches back (0: no trail).
    radius: dot radius in whole pixels (rounded; the dot is 2 * radius + 1 pixels wide); `default_radius` if None.
    occluded: 'hide' or 'hollow'.
  Returns:
    uint8 [t, h, w, 3].
  """
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f'video must be uint8 [t, h, w, 3]; got {video.dtype} {video.shape}')
  t, h, w, _ = video.shape
  tracks, visible = np.asarray(tracks, np.float64), np.asarray(visible, bool)
  n = tracks.shape[0]
  if tracks.shape != (n, t, 2) or visible.shape != (n, t):
    raise ValueError(f'expected tracks [n, {t}, 2] and visible [n, {t}] for a {t}-frame video; got '
                     f'{tracks.shape} and {visible.shape}')
  if occluded not in _OCCLUDED_MODES:
    raise ValueError(f'occluded must be one of {_OCCLUDED_MODES}; got {occluded!r}')
  colors = point_colors(n) if colors is None else np.asarray(colors, np.uint8)
  if colors.shape != (n, 3):
    raise ValueError(f'colors must be [{n}, 3]; got {colors.shape}')
  out = np.empty_like(video)
  for f in range(t):
    start = max(0, f - trail)  # the frames the trail of frame f reaches back to
    out[f] = paint_frame(video[f], tracks[:, start:f + 1], visible[:, start:f + 1], colors, trail, radius, occluded)
  return out


def paint_frame(frame: np.ndarray,  # [h, w, 3] uint8
                tracks: np.ndarray,  # [n, k, 2] (x, y): the last k frames' positions, the current frame last
                visible: np.ndarray,  # [n, k] bool
                colors: np.ndarray,  # [n, 3] uint8
                trail: int = 8,
                radius: float | None = None,
                occluded: str = 'hide') -> np.ndarray:  # [h, w, 3] uint8
  """Paints one frame as `paint_tracks` paints frame k - 1 of a video (for streaming: no other frame is needed).

  Only the last `trail + 1` columns of `tracks` / `visible` are used; pass at least that many (fewer at the
  start of a video).
  """
  frame = np.asarray(frame)
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f'frame must be uint8 [h, w, 3]; got {frame.dtype} {frame.shape}')
  if trail < 0:
    raise ValueError(f'trail must be >= 0; got {trail}')
  if occluded not in _OCCLUDED_MODES:
    raise ValueError(f'occluded must be one of {_OCCLUDED_MODES}; got {occluded!r}')
  tracks, visible = np.asarray(tracks, np.float64), np.asarray(visible, bool)
  n, k = visible.shape[:2] if visible.ndim == 2 else (-1, -1)
  if k < 1 or tracks.shape != (n, k, 2):
    raise ValueError(f'expected tracks [n, k, 2] and visible [n, k] with k >= 1; got {tracks.shape} and '
                     f'{visible.shape}')
  colors = np.asarray(colors, np.uint8)
  if colors.shape != (n, 3):
    raise ValueError(f'colors must be [{n}, 3]; got {colors.shape}')
  h, w = frame.shape[:2]
  radius = max(1, int(round(default_radius((h, w)) if radius is None else radius)))
  line_width = max(1, int(round(radius / 2)))
  drawable = visible & np.isfinite(tracks).all(-1)  # [n, k]
  shown = np.isfinite(tracks).all(-1) & (visible if occluded == 'hide' else True)  # [n, k] gets a marker

  f = k - 1
  image = Image.fromarray(frame)
  draw = ImageDraw.Draw(image, 'RGBA')  # 'RGBA' mode alpha-blends onto the RGB frame
  # Trails, oldest first so newer segments lie on top. Segment s joins frames s - 1 and s.
  for s in range(max(1, f - trail + 1), f + 1):
    alpha = int(round(255 * (trail - (f - s)) / trail))
    for i in np.nonzero(drawable[:, s - 1] & drawable[:, s] & shown[:, f])[0]:
      ends = [tuple(tracks[i, s - 1] - 0.5), tuple(tracks[i, s] - 0.5)]
      draw.line(ends, fill=(*colors[i], alpha), width=line_width)
  for i in np.nonzero(shown[:, f])[0]:
    x, y = np.floor(tracks[i, f])  # the pixel that holds the point
    box = [x - radius, y - radius, x + radius, y + radius]  # inclusive pixel indices: 2 * radius + 1 wide
    if visible[i, f]:
      draw.ellipse(box, fill=tuple(colors[i]))
    else:
      draw.ellipse(box, outline=tuple(colors[i]), width=line_width)
  return np.asarray(image)


class TrailPainter:
  """Paints frames one at a time with each point's last `trail` positions (bounded per point) and an optional
  overlay text (white on a dark box at the top-left corner). Points may come and go between frames: each is
  known by its index, which picks its colour (`colors[index]`, default `point_colors`)."""

  def __init__(self, trail: int = 8, colors: np.ndarray | None = None):  # colors [n, 3] uint8 by index
    if isinstance(trail, bool) or not isinstance(trail, int) or trail < 0:
      raise ValueError(f'trail must be an integer >= 0; got {trail!r}')
    self.trail = trail
    self.colors = None if colors is None else np.asarray(colors, np.uint8)
    self.history: dict[int, collections.deque] = {}  # index -> deque of ((x, y), visible)

  def paint(self, frame: np.ndarray,  # [h, w, 3] uint8
            indices: np.ndarray,  # [n] the points' indices
            tracks: np.ndarray,  # [n, 2] (x, y) pixels of `frame`
            visible: np.ndarray,  # [n] bool
            overlay: str | None = None) -> np.ndarray:  # [h, w, 3] uint8
    indices = [int(i) for i in indices]
    for gone in set(self.history) - set(indices):
      del self.history[gone]
    for i, xy, vis in zip(indices, np.asarray(tracks, np.float64), np.asarray(visible, bool)):
      self.history.setdefault(i, collections.deque(maxlen=self.trail + 1)).append((xy, vis))
    if overlay:
      frame = contact_sheet(np.asarray(frame)[None], columns=1, labels=[overlay])
    if not indices:
      return np.array(frame, np.uint8)
    k = max(len(self.history[i]) for i in indices)  # shorter histories start with positions never drawn
    rows = [[(np.full(2, np.nan), False)] * (k - len(self.history[i])) + list(self.history[i]) for i in indices]
    xy, vis = np.array([[p[0] for p in r] for r in rows]), np.array([[p[1] for p in r] for r in rows])
    if self.colors is not None and max(indices) >= len(self.colors):
      raise ValueError(f'indices must be < {len(self.colors)} (the colours given); got {max(indices)}')
    colors = (point_colors(max(indices) + 1) if self.colors is None else self.colors)[indices]
    return paint_frame(frame, xy, vis, colors, self.trail)


def side_by_side(*videos: np.ndarray, gap: int = 0) -> np.ndarray:  # [..., h, sum(w) + gaps, 3] uint8
  """Concatenates videos (or images) of equal height along the width, with `gap` black columns between."""
  if not videos:
    raise ValueError('side_by_side needs at least one video')
  shapes = {v.shape[:-2] for v in videos}
  if len(shapes) != 1:
    raise ValueError(f'videos must agree on every axis but the width; got {[v.shape for v in videos]}')
  parts = []
  for i, v in enumerate(videos):
    if i and gap:
      parts.append(np.zeros(v.shape[:-2] + (gap, v.shape[-1]), v.dtype))
    parts.append(v)
  return np.concatenate(parts, axis=-2)


def compare_tracks(video: np.ndarray,  # [t, h, w, 3] uint8
                   pred_tracks: np.ndarray,  # [n, t, 2] (x, y)
                   pred_visible: np.ndarray,  # [n, t] bool
                   gt_tracks: np.ndarray,  # [n, t, 2] (x, y)
                   gt_visible: np.ndarray,  # [n, t] bool
                   colors: np.ndarray | None = None,  # [n, 3] uint8
                   **paint_kwargs) -> np.ndarray:  # [t, h, 2 * w, 3] uint8
  """Prediction (left) and ground truth (right) painted with the same colour per point, side by side."""
  if colors is None:
    first = np.argmax(np.asarray(gt_visible), axis=1)  # colour by where the ground truth starts
    start = np.asarray(gt_tracks)[np.arange(len(first)), first]  # [n, 2] (x, y)
    colors = rainbow_colors(np.stack([start[:, 1], start[:, 0]], -1), video.shape[1:3])
  pred = paint_tracks(video, pred_tracks, pred_visible, colors, **paint_kwargs)
  gt = paint_tracks(video, gt_tracks, gt_visible, colors, **paint_kwargs)
  return side_by_side(pred, gt)


def track_strip(video: np.ndarray,  # [t, h, w, 3] uint8
                pred_tracks: np.ndarray,  # [n, t, 2] (x, y)
                pred_visible: np.ndarray,  # [n, t] bool
                gt_tracks: np.ndarray,  # [n, t, 2] (x, y)
                gt_visible: np.ndarray,  # [n, t] bool
                num_frames: int = 4) -> np.ndarray:  # [num_frames * h, 2 * w, 3] uint8
  """A summary image: `num_frames` evenly spaced frames (rows), prediction left and ground truth right."""
  t = np.asarray(video).shape[0]
  frames = np.unique(np.linspace(0, t - 1, min(num_frames, t)).round().astype(int))
  painted = compare_tracks(video, pred_tracks, pred_visible, gt_tracks, gt_visible)[frames]
  return contact_sheet(painted, columns=1, labels=[f'frame {f}: prediction | ground truth' for f in frames])


def contact_sheet(frames: np.ndarray,  # [k, h, w, 3] uint8
                  columns: int,
                  labels: Sequence[str] | None = None) -> np.ndarray:  # [rows * h, columns * w, 3] uint8
  """Tiles frames row by row into one image (rows = ceil(k / columns)); empty cells are black.

  `labels` (one per frame) are written in white on a dark box at each tile's top-left corner.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'frames must be uint8 [k, h, w, 3]; got {frames.dtype} {frames.shape}')
  k, h, w, _ = frames.shape
  if columns < 1:
    raise ValueError(f'columns must be positive; got {columns}')
  if labels is not None and len(labels) != k:
    raise ValueError(f'got {len(labels)} labels for {k} frames')
  rows = -(-k // columns)
  sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
  for i, frame in enumerate(frames):
    r, c = divmod(i, columns)
    sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = frame
  if labels:
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image, 'RGBA')
    for i, label in enumerate(labels):
      r, c = divmod(i, columns)
      corner = (c * w + 2, r * h + 2)
      draw.rectangle(draw.textbbox(corner, str(label)), fill=(0, 0, 0, 160))
      draw.text(corner, str(label), fill=(255, 255, 255))
    sheet = np.asarray(image)
  return sheet


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes uint8 [h, w, 3] (or [h, w]) to `path`; the format follows the extension. Creates parent folders."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'image must be uint8; got {image.dtype}')
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(image).save(path)
