"""Camera and sensor effects on a rendered clip: exposure drift, motion blur, defocus, sensor noise, JPEG.

The renderer's pixels are perfect: infinitely short shutter, pinhole lens, noiseless sensor, lossless storage. Real
consumer video has none of these, so `sample_effects` draws per-clip knob values from a `CameraEffects` and
`apply_effects` applies them, in camera order: exposure gain, motion blur, defocus, noise, clipping to [0, 1],
JPEG-like compression. Only pixels change; the ground truth (tracks, depth, segmentation) is untouched.

Pure numpy, float32, vectorised over pixels; internally channels-first ([3, t, h, w]) like `render`. A pure
function of its inputs and the rng state. `CameraEffects()` (all off) is an exact identity. Axes: t frames, h, w
pixels, n pixels or blocks of a flat list.
"""

import dataclasses
import math
import numbers
from typing import NamedTuple, Optional

import numpy as np

Range = tuple[float, float]

# Box half-widths of the pre-blurred copies for defocus, and the circle-of-confusion radius each stands for: the
# uniform disc of radius R has per-axis variance R^2 / 4, a (2r + 1)-wide box r (r + 1) / 3. Larger CoCs clamp.
_BOX_HALF_WIDTHS = (0, 1, 2, 4, 8)
_LEVEL_RADII = tuple(2 * math.sqrt(r * (r + 1) / 3) for r in _BOX_HALF_WIDTHS)  # 0, 1.63, 2.83, 5.16, 9.80 px
_FOCUS_UV = (0.3, 0.7)  # the focus pixel is drawn uniformly in this central part of the frame (fractions)
_FOCUS_WINDOW = 2  # focus distance = median depth over a (2 * _FOCUS_WINDOW + 1)^2 window, robust at edges
_DEPTH_EPS = 1e-3  # depths clamp to at least this (world units) in the CoC
_CHUNK_PIXELS = 1 << 16  # `apply_effects` works through whole frames, about this many pixels at a time

# JPEG (ITU T.81 Annex K) base quantisation tables, natural (row-major) order; BT.601 full-range YCbCr (JFIF).
_LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)
_CHROMA_TABLE = np.full((8, 8), 99)
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
_RGB_TO_YCC = np.float32([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC.astype(np.float64)).astype(np.float32)
_DCT = np.float32([[math.sqrt((1 if k == 0 else 2) / 8) * math.cos(math.pi * (2 * n + 1) * k / 16)
                    for n in range(8)] for k in range(8)])  # orthonormal DCT-II [k, n]


@dataclasses.dataclass(frozen=True)
class CameraEffects:
  """What `sample_effects` draws per clip. Ranges are (low, high), drawn uniformly (integers inclusive).

  Attributes:
    shutter: exposed fraction of the frame interval (0: no motion blur, 0.5: the 180-degree rule, 1: all of it).
    blur_samples: most bilinear reads per pixel along the motion; a clip whose longest streak is L pixels uses
      min(blur_samples, max(2, ceil(L))), which keeps the reads at most a pixel apart (1: no blur).
    defocus_probability: chance that a clip is defocused at all.
    aperture_px: circle-of-confusion radius in pixels at relative defocus |1 - focus / depth| = 1 (a point at
      infinity, or at half the focus distance). Pixels of the rendered resolution; radii clamp at ~9.8 px.
    shot_noise: std of the signal-dependent noise at signal 1 (variance proportional to the signal).
    read_noise: std of the signal-independent Gaussian noise.
    jpeg_probability: chance that a clip is JPEG-compressed (each frame on its own, as motion JPEG).
    jpeg_quality: libjpeg quality factor, 1..100.
    jpeg_chroma_subsampling: True: chroma at half resolution in both axes (4:2:0), as nearly all consumer video.
    exposure_stops: most change of exposure over the clip, in stops: the first and last frames' exposures are
      drawn uniformly in [-exposure_stops / 2, exposure_stops / 2] with a half-cosine in between.
  """
  shutter: Range = (0.0, 0.0)
  blur_samples: int = 8
  defocus_probability: float = 0.0
  aperture_px: Range = (0.0, 0.0)
  shot_noise: Range = (0.0, 0.0)
  read_noise: Range = (0.0, 0.0)
  jpeg_probability: float = 0.0
  jpeg_quality: tuple[int, int] = (75, 95)
  jpeg_chroma_subsampling: bool = True
  exposure_stops: float = 0.0

  def __post_init__(self):
    check_range('shutter', self.shutter, 0, 1)
    if not _is_int(self.blur_samples) or self.blur_samples < 1:
      raise ValueError(f'blur_samples={self.blur_samples!r} must be an integer >= 1')
    for name in ('defocus_probability', 'jpeg_probability'):
      value = getattr(self, name)
      if not is_real(value) or not 0 <= value <= 1:
        raise ValueError(f'{name}={value!r} must be a probability in [0, 1]')
    for name in ('aperture_px', 'shot_noise', 'read_noise'):
      check_range(name, getattr(self, name), 0, math.inf)
    check_range('jpeg_quality', self.jpeg_quality, 1, 100, integers=True)
    if not isinstance(self.jpeg_chroma_subsampling, bool):
      raise ValueError(f'jpeg_chroma_subsampling={self.jpeg_chroma_subsampling!r} must be a bool')
    if not is_real(self.exposure_stops) or not 0 <= self.exposure_stops < math.inf:
      raise ValueError(f'exposure_stops={self.exposure_stops!r} must be a finite number >= 0')


def _is_int(x) -> bool:  # bools are not counts
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x) -> bool:  # a real number that is not a bool (the knob checks here and in `cards`)
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_range(name: str, value, low: float, high: float, integers: bool = False):
  """Raises ValueError naming `name` unless `value` is a tuple (lo, hi) of finite numbers, low <= lo <= hi <= high."""
  kind = _is_int if integers else is_real
  if not (isinstance(value, tuple) and len(value) == 2 and all(kind(v) and math.isfinite(v) for v in value)
          and low <= value[0] <= value[1] <= high):
    numbers_of = 'integers' if integers else 'finite numbers'
    raise ValueError(f'{name}={value!r} must be a tuple (lo, hi) of {numbers_of} with {low} <= lo <= hi <= {high}')


# Moderate settings typical of consumer video (phones, action cameras): up to the 180-degree shutter, occasional
# shallow defocus, mild noise after in-camera denoising, JPEG 50..95 most of the time, <= half a stop of drift.
REALISTIC = CameraEffects(
    shutter=(0.0, 0.5), blur_samples=8, defocus_probability=0.3, aperture_px=(0.5, 2.0),
    shot_noise=(0.005, 0.03), read_noise=(0.001, 0.008), jpeg_probability=0.9, jpeg_quality=(50, 95),
    jpeg_chroma_subsampling=True, exposure_stops=0.5)


class EffectDraw(NamedTuple):
  """One clip's concrete effect values. The defaults are the identity."""
  exposure_start: float = 0.0  # exposure of the first frame, stops (gain 2 ** stops)
  exposure_end: float = 0.0  # exposure of the last frame, stops
  shutter: float = 0.0  # exposed fraction of the frame interval; 0: no motion blur
  blur_samples: int = 8  # most bilinear reads per pixel along the motion
  aperture_px: float = 0.0  # CoC radius (pixels) at relative defocus 1; 0: pinhole, no defocus
  focus_uv: tuple[float, float] = (0.5, 0.5)  # (x, y) frame fractions of the pixel the lens focuses on
  shot_noise: float = 0.0  # noise std at signal 1, variance proportional to the signal
  read_noise: float = 0.0  # signal-independent noise std
  jpeg_quality: int = 0  # libjpeg quality 1..100; 0: no compression
  jpeg_chroma_subsampling: bool = True  # 4:2:0 chroma


def sample_effects(rng: np.random.Generator, effects: CameraEffects) -> EffectDraw:
  """Draws one clip's effect values. Always consumes the same 11 uniforms, whatever the knobs, so that clips
  drawn from one seed under different `effects` share their randomness (changing a knob changes only its effect)."""
  u = rng.random(11)

  def lerp(bounds, x):
    return float(bounds[0] + x * (bounds[1] - bounds[0]))

  half = effects.exposure_stops / 2
  low_q, high_q = effects.jpeg_quality
  defocused = u[1] < effects.defocus_probability
  return EffectDraw(
      exposure_start=lerp((-half, half), u[9]),
      exposure_end=lerp((-half, half), u[10]),
      shutter=lerp(effects.shutter, u[0]),
      blur_samples=int(effects.blur_samples),
      aperture_px=lerp(effects.aperture_px, u[2]) if defocused else 0.0,
      focus_uv=(lerp(_FOCUS_UV, u[3]), lerp(_FOCUS_UV, u[4])) if defocused else EffectDraw().focus_uv,
      shot_noise=lerp(effects.shot_noise, u[5]),
      read_noise=lerp(effects.read_noise, u[6]),
      jpeg_quality=(min(int(low_q + u[8] * (high_q - low_q + 1)), high_q) if u[7] < effects.jpeg_probability
                    else 0),
      jpeg_chroma_subsampling=effects.jpeg_chroma_subsampling)


def exposure_gains(start_stops: float, end_stops: float, num_frames: int) -> np.ndarray:  # [t] float32
  """Per-frame gains 2 ** e(t), e easing from `start_stops` (first frame) to `end_stops` (last) along a half-cosine
  (zero slope at both ends, monotone in between)."""
  u = np.arange(num_frames) / max(num_frames - 1, 1)
  stops = start_stops + (end_stops - start_stops) * (1 - np.cos(np.pi * u)) / 2
  return np.exp2(stops).astype(np.float32)


def changes_pixels(draw: EffectDraw) -> bool:
  """Whether `draw` is anything but the identity (`apply_effects` then returns its input)."""
  return bool(draw.exposure_start or draw.exposure_end or draw.shutter > 0 or draw.aperture_px > 0
              or draw.shot_noise > 0 or draw.read_noise > 0 or draw.jpeg_quality)


def apply_effects(
    video: np.ndarray,  # [t, h, w, 3] float32 linear RGB in [0, 1]
    depth: Optional[np.ndarray],  # [t, h, w] distance to the camera (world units); only needed for defocus
    flow: Optional[np.ndarray],  # [t, h, w, 2] (x, y) image motion, pixels per frame; only needed for motion blur
    draw: EffectDraw,
    rng: np.random.Generator,  # only the noise draws from it
) -> np.ndarray:  # [t, h, w, 3] float32 in [0, 1]
  """Applies one clip's camera effects in camera order: exposure, motion blur, defocus, noise, clip, JPEG.

  `flow[t]` is the motion of each pixel's surface point from frame t to t + 1 (for the last frame, from t - 1 to
  t). With `draw` the identity (`EffectDraw()`) `video` itself comes back, bit for bit.
  """
  video = np.asarray(video, np.float32)
  if video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape:
    raise ValueError(f'video must be [t, h, w, 3] with t, h, w > 0, got shape {video.shape}')
  t, h, w, _ = video.shape
  if draw.shutter > 0 and (flow is None or np.shape(flow) != (t, h, w, 2)):
    raise ValueError(f'flow must be [t, h, w, 2] = {(t, h, w, 2)} for motion blur, got {np.shape(flow)}')
  if draw.aperture_px > 0 and (depth is None or np.shape(depth) != (t, h, w)):
    raise ValueError(f'depth must be [t, h, w] = {(t, h, w)} for defocus, got {np.shape(depth)}')
  if not (_is_int(draw.jpeg_quality) and 0 <= draw.jpeg_quality <= 100 and _is_int(draw.blur_samples)
          and draw.blur_samples >= 1 and min(draw.shot_noise, draw.read_noise, draw.aperture_px) >= 0
          and 0 <= draw.shutter <= 1):
    raise ValueError(f'draw has a value out of range (jpeg_quality 0..100, blur_samples >= 1, shutter in [0, 1], '
                     f'non-negative stds and aperture): {draw}')
  noisy = draw.shot_noise > 0 or draw.read_noise > 0
  exposed = draw.exposure_start != 0 or draw.exposure_end != 0
  if not changes_pixels(draw):
    return video

  gains = exposure_gains(draw.exposure_start, draw.exposure_end, t)
  flow = None if flow is None else np.asarray(flow, np.float32)
  depth = None if depth is None else np.asarray(depth, np.float32)
  samples = _blur_samples(flow, draw.shutter, draw.blur_samples) if draw.shutter > 0 else 0
  focus = _focus_distance(depth, draw.focus_uv) if draw.aperture_px > 0 else 0.0
  out = np.empty_like(video)
  # Every effect acts within a frame, so the clip goes through in chunks of frames small enough to stay in cache
  # (memory traffic dominates the cost of these elementwise ops); the noise is drawn chunk after chunk.
  chunk = max(1, _CHUNK_PIXELS // (h * w))
  for lo in range(0, t, chunk):
    part = slice(lo, lo + chunk)
    frames = np.ascontiguousarray(np.moveaxis(video[part], -1, 0))  # [3, t', h, w] a copy
    if exposed:
      frames *= gains[part, None, None]
    if samples:
      frames = _motion_blur(frames, flow[part], draw.shutter, samples)
    if draw.aperture_px > 0:
      frames = _defocus(frames, depth[part], draw.aperture_px, focus)
    if noisy:
      _add_noise(frames, draw.shot_noise, draw.read_noise, rng)
    np.clip(frames, 0, 1, out=frames)
    if draw.jpeg_quality:
      frames = _jpeg(frames, draw.jpeg_quality, draw.jpeg_chroma_subsampling)
    out[part] = np.moveaxis(frames, 0, -1)
  return out


# ---------------------------------------------------------------------------------------------------------------
# The effects, on channels-first frames [3, t, h, w] float32.


def _blur_samples(flow: np.ndarray, shutter: float, max_samples: int) -> int:
  """Reads per pixel for the clip's motion blur: enough to space them at most a pixel apart along the longest
  streak (bilinear hats a pixel apart tile evenly), at most `max_samples`; 0 when nothing moves."""
  longest = shutter * float(np.sqrt(np.max(flow[..., 0] ** 2 + flow[..., 1] ** 2)))
  return 0 if longest == 0 else min(max_samples, max(2, math.ceil(longest)))


def _motion_blur(frames: np.ndarray, flow: np.ndarray, shutter: float, n: int) -> np.ndarray:
  """Mean of n bilinear reads (edge-clamped) at p + s * shutter * flow(p), s at the midpoints of n equal parts of
  [-0.5, 0.5]: a box of length shutter * |flow| centred on the frame time (energy-preserving away from edges).
  frames [3, t, h, w], flow [t, h, w, 2]."""
  c, t, h, w = frames.shape
  streak_x = np.float32(shutter) * flow[..., 0]  # [t, h, w]
  streak_y = np.float32(shutter) * flow[..., 1]
  # One extra edge row and column, so that the +1 neighbours of a clamped read stay inside (exact at the edge).
  padded = np.pad(frames, ((0, 0), (0, 0), (0, 1), (0, 1)), mode='edge').reshape(c, -1)  # [3, t (h+1) (w+1)]
  row = w + 1
  grid_x, grid_y = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)[:, None]
  exact = np.float32 if padded.shape[1] < 2 ** 24 else np.float64  # holds the flat indices exactly
  start = np.arange(t, dtype=exact)[:, None, None] * ((h + 1) * row)  # [t, 1, 1] first index of each frame
  # Preallocated buffers and in-place ops: allocation (page faults) would cost as much as the arithmetic.
  x, y, x0, y0 = (np.empty((t, h, w), dtype) for dtype in (np.float32, np.float32, np.float32, exact))
  index = np.empty((t, h, w), np.intp)
  corners = np.empty((4, t * h * w), np.float32)
  total = np.zeros((c, t * h * w), np.float32)
  for s in (np.arange(n, dtype=np.float32) + np.float32(0.5)) / np.float32(n) - np.float32(0.5):
    for pos, grid, streak, size, floor in ((x, grid_x, streak_x, w, x0), (y, grid_y, streak_y, h, y0)):
      np.multiply(streak, s, out=pos)
      pos += grid
      np.clip(pos, 0, size - 1, out=pos)
      np.floor(pos, out=floor)
      pos -= floor  # the fractional part
    y0 *= row  # the top-left neighbour's flat index
    y0 += x0
    y0 += start
    np.copyto(index, y0, casting='unsafe')
    flat, ax, ay = index.reshape(-1), x.reshape(-1), y.reshape(-1)
    v00, v01, v10, v11 = corners
    for channel, plane in enumerate(padded):
      for offset, out in zip((0, 1, row, row + 1), corners):  # the four neighbours, from shifted views
        plane[offset:].take(flat, out=out, mode='clip')  # indices are in range already
      _lerp_into(v00, v01, ax)  # top
      _lerp_into(v10, v11, ax)  # bottom
      _lerp_into(v00, v10, ay)
      total[channel] += v00
  total *= np.float32(1 / n)
  return total.reshape(c, t, h, w)


def _lerp_into(a: np.ndarray, b: np.ndarray, weight: np.ndarray):
  """a += weight * (b - a) in place (b is overwritten)."""
  b -= a
  b *= weight
  a += b


def _focus_distance(depth: np.ndarray, focus_uv: tuple[float, float]) -> float:
  """Median depth [t, h, w] of the middle frame around the pixel at frame fractions (x, y) `focus_uv`."""
  t, h, w = depth.shape
  col = min(max(int(focus_uv[0] * w), 0), w - 1)
  row = min(max(int(focus_uv[1] * h), 0), h - 1)
  k = _FOCUS_WINDOW
  return float(np.median(depth[t // 2, max(row - k, 0):row + k + 1, max(col - k, 0):col + k + 1]))


def _defocus(frames: np.ndarray, depth: np.ndarray, aperture_px: float, focus: float) -> np.ndarray:
  """Thin-lens defocus: CoC radius aperture_px * |1 - focus / depth| per pixel, rendered as a per-pixel blend of
  the two pre-blurred copies (`_BOX_HALF_WIDTHS`) whose equivalent radii bracket it. Cheap: no occlusion-aware
  scattering, so blurred surfaces bleed a little over sharp ones."""
  coc = np.float32(aperture_px) * np.abs(1 - np.float32(focus) / np.maximum(depth, np.float32(_DEPTH_EPS)))
  level = np.interp(coc, _LEVEL_RADII, np.arange(len(_LEVEL_RADII))).astype(np.float32)  # [t, h, w] fractional
  top = math.ceil(float(level.max()))
  if top == 0:
    return frames
  out = np.zeros_like(frames)
  for k, blurred in enumerate([frames] + _box_blurs(frames, _BOX_HALF_WIDTHS[1:top + 1])):
    out += np.maximum(1 - np.abs(level - np.float32(k)), 0) * blurred  # hat weights, summing to 1
  return out


def _box_blurs(frames: np.ndarray, half_widths: tuple[int, ...]) -> list[np.ndarray]:
  """Edge-padded (2r + 1)^2 box means of frames [3, t, h, w] for increasing half-widths r, by shifted sums (the
  vertical sums grow incrementally from one width to the next)."""
  h, w = frames.shape[2:]
  pad = half_widths[-1]
  padded = np.pad(frames, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode='edge')
  vertical = padded[:, :, pad:pad + h].copy()  # [3, t, h, w + 2 pad]
  done, blurred = 0, []
  for r in half_widths:
    for d in range(done + 1, r + 1):
      vertical += padded[:, :, pad - d:pad - d + h]
      vertical += padded[:, :, pad + d:pad + d + h]
    done = r
    box = vertical[..., pad:pad + w].copy()
    for d in range(1, r + 1):
      box += vertical[..., pad - d:pad - d + w]
      box += vertical[..., pad + d:pad + d + w]
    box *= np.float32(1 / (2 * r + 1) ** 2)
    blurred.append(box)
  return blurred


def _add_noise(frames: np.ndarray, shot: float, read: float, rng: np.random.Generator):
  """In place: Gaussian noise of variance shot^2 * signal + read^2 (shot noise ~ Poisson, plus read noise)."""
  noise = rng.standard_normal(frames.shape, dtype=np.float32)
  if shot > 0:
    std = np.maximum(frames, 0)
    std *= np.float32(shot * shot)
    std += np.float32(read * read)
    noise *= np.sqrt(std, out=std)
  else:
    noise *= np.float32(read)
  frames += noise


def jpeg_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:  # luma [8, 8], chroma [8, 8] int
  """The libjpeg quantisation tables at `quality` 1..100 (`jpeg_quality_scaling`, baseline: entries in 1..255)."""
  if not (_is_int(quality) and 1 <= quality <= 100):
    raise ValueError(f'quality={quality!r} must be an integer in 1..100')
  scale = 5000 // quality if quality < 50 else 200 - 2 * quality
  return tuple(np.clip((base * scale + 50) // 100, 1, 255) for base in (_LUMA_TABLE, _CHROMA_TABLE))


def _jpeg(frames: np.ndarray, quality: int, subsample: bool) -> np.ndarray:
  """Each frame [3, t, h, w] through a baseline JPEG round trip (YCbCr, optional 4:2:0 chroma, 8x8 DCT,
  quantisation), in float: the decoder's integer rounding is left to the renderer's final uint8 quantisation.
  Edge-padded to whole blocks (16 px with 4:2:0) and cropped back; clipped to [0, 1]."""
  _, t, h, w = frames.shape
  m = 16 if subsample else 8
  height, width = -(-h // m) * m, -(-w // m) * m
  padded = np.pad(frames, ((0, 0), (0, 0), (0, height - h), (0, width - w)), mode='edge')
  # einsum (unoptimised) rather than tensordot: BLAS threads cost more than they save here and contend with training.
  ycc = np.einsum('ij,j...->i...', _RGB_TO_YCC * np.float32(255), padded)  # [3, t, H, W] in 0..255 units
  ycc[0] -= np.float32(128)  # level shift (chroma is already centred on 0)
  luma_table, chroma_table = jpeg_tables(quality)
  luma = _dct_round_trip(ycc[:1], luma_table)
  if subsample:
    cb_cr = ycc[1:]
    chroma = cb_cr[..., 0::2, 0::2] + cb_cr[..., 1::2, 0::2] + cb_cr[..., 0::2, 1::2] + cb_cr[..., 1::2, 1::2]
    chroma *= np.float32(0.25)  # 2x2 means
    chroma = _upsample2(_upsample2(_dct_round_trip(chroma, chroma_table), -1), -2)
  else:
    chroma = _dct_round_trip(ycc[1:], chroma_table)
  luma += np.float32(128)
  rgb = np.einsum('ij,j...->i...', _YCC_TO_RGB / np.float32(255), np.concatenate([luma, chroma]))
  return np.clip(rgb[:, :, :h, :w], 0, 1)


def _dct_round_trip(planes: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Quantises the 8x8 block DCT of planes [..., H, W] (H, W multiples of 8) with `table` [8, 8] and inverts it.
  Stacked 8x8 matmuls: each far below the size at which BLAS starts threads."""
  height, width = planes.shape[-2:]
  blocks = planes.reshape(-1, height // 8, 8, width // 8, 8).swapaxes(2, 3)
  blocks = np.ascontiguousarray(blocks).reshape(-1, 8, 8)  # [n, 8, 8]
  steps = table.astype(np.float32)
  levels = np.rint(_DCT @ blocks @ _DCT.T / steps)
  blocks = _DCT.T @ (levels * steps) @ _DCT
  blocks = blocks.reshape(-1, height // 8, width // 8, 8, 8).swapaxes(2, 3)
  return np.ascontiguousarray(blocks).reshape(planes.shape)


def _upsample2(x: np.ndarray, axis: int) -> np.ndarray:
  """Doubles `axis` (-1 or -2) of x with libjpeg's "fancy" (triangle) upsampling: each output is 3/4 the nearer
  input sample plus 1/4 the next nearest (edge-clamped)."""
  x = np.swapaxes(x, axis, -1)
  before = np.concatenate([x[..., :1], x[..., :-1]], axis=-1)
  after = np.concatenate([x[..., 1:], x[..., -1:]], axis=-1)
  out = np.empty(x.shape[:-1] + (2 * x.shape[-1],), np.float32)
  out[..., 0::2] = np.float32(0.75) * x + np.float32(0.25) * before
  out[..., 1::2] = np.float32(0.75) * x + np.float32(0.25) * after
  return np.swapaxes(out, axis, -1)
