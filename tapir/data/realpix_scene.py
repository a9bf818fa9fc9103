r"""The scenes of the "realpix" clips (`tapir.data.realpix`): their config, layers, exact maps and seeded draw.

Layers, bottom to top (raster pixels p = (x, y) as in `tapir.conventions`, texels (u, v) as in `photographs`):
  0  `Background`: pixel p at frame t shows texel H_t(p + d_t(p)) of a photograph; d_t is a sum of sinusoids
     (the elastic warp; each row of its Jacobian has norm < 1/2, so p -> p + d_t(p) is invertible), H_t a
     homography.
  k  `CutOut`: shape coordinates o sit at raster T_kt + L_kt o; the pixel is inside iff |o| < rho_k(angle of o)
     (`inside_shape`, the one test shared by the renderer and the occlusion truth) and shows texel affine_k(o).
Every parameter follows a cubic Bezier curve in time over `motion_frames` frames, so the motion is smooth and
stays in the convex hull of its control points: inside the configured ranges. The background's scale and
offset are fitted so that its view (grown by the elastic reach) stays inside the photograph at every frame.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import numpy as np

from tapir.data import photographs

EVAL_SEEDS = range(0, 10_000)
TRAIN_SEED_OFFSET = 1_000_000
MAX_FOREGROUND = 8  # cut-outs per clip at most
NEWTON_TOLERANCE = 1e-6  # pixels: the largest residual `background_positions` may leave
_NEWTON_STEPS = 20  # an upper bound: from the undisplaced start Newton needs about 5
_ELASTIC_MODES = 3  # sinusoids per displacement component, their weights' magnitudes summing to the amplitude
_ELASTIC_FREQUENCY = (0.5, 1.5)  # cycles per shorter frame side: a low-frequency warp
_ELASTIC_DRIFT = 0.5  # at most this many cycles of phase drift over the path
_OUTLINE_HARMONICS = 3  # a cut-out's outline: radius 1 + sum_m a_m cos(m phi + psi_m), m = 2, 3, 4
_OUTLINE_ROUGHNESS = 0.3  # sum_m |a_m| at most: the outline stays smooth and star-shaped about its centre
_ASPECT = (0.6, 1.0)  # a cut-out's fixed stretch of its second shape axis
_SIZE_CHANGE = math.log(1.25)  # a cut-out's size varies by up to this factor (log) along its path
_TEXTURE_RADIUS = (0.15, 0.3)  # a cut-out's texture disc, as a fraction of its photograph's shorter side
_CROP_FILL = (0.6, 1.0)  # the background's scale, as a fraction of the largest keeping the view in the photograph
_PHOTO_MARGIN = 8.0  # texels between every read and the photograph's edge, away from its mirrored repeat
_CANDIDATES_PER_TRACK = 4  # track anchors drawn per requested track, chosen from by the layer they land on


def _check_pair(name: str, value, low: float, high: float, integer: bool = False) -> tuple:
  kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
  if not (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
          and low <= value[0] <= value[1] <= high):
    raise ValueError(f'{name} must be a pair (low, high) of {"integers" if integer else "numbers"} with '
                     f'{low} <= low <= high <= {high}, got {value!r}')
  return tuple(int(v) if integer else float(v) for v in value)


@dataclasses.dataclass(frozen=True)
class RealPixConfig:
  """What `sample_scene` draws. Lengths are fractions of the shorter frame side unless stated.

  Attributes:
    height: frame height in pixels.
    width: frame width in pixels.
    num_frames: frames per clip.
    motion_frames: frames over which every path runs its whole course: a shorter clip sees its start at the same
      speed, a longer one stretches it over its own length.
    num_foreground: (low, high) number of cut-outs, inclusive.
    tracks: tracks per clip (all kept: each is visible where it was drawn).
    foreground_share: fraction of the tracks drawn on cut-outs (where enough of them is in view).
    zoom: (low, high) background magnification (> 1 zooms in), drawn per Bezier control point (as the others).
    max_rotation: background rotation in degrees, within +-this.
    max_translation: background pan within +-this from the centre (so up to twice this over a clip).
    max_perspective: perspective coefficients within +-this (normalised frame coordinates).
    elastic_amplitude: largest elastic displacement (0.012: 3 px at 256).
    foreground_radius: (low, high) cut-out radius at its start.
    foreground_travel: a cut-out's path control points lie within +-this of its start, per axis.
    foreground_rotation: a cut-out turns within +-this many degrees of its start.
    photographs: the photographs to cut from, a subset of `photographs.EVAL_PHOTOGRAPHS`.
  """
  height: int = 256
  width: int = 256
  num_frames: int = 24
  motion_frames: int = 24
  num_foreground: tuple[int, int] = (1, 3)
  tracks: int = 256
  foreground_share: float = 0.3
  zoom: tuple[float, float] = (0.8, 1.25)
  max_rotation: float = 15.0
  max_translation: float = 0.1
  max_perspective: float = 0.1
  elastic_amplitude: float = 0.012
  foreground_radius: tuple[float, float] = (0.12, 0.25)
  foreground_travel: float = 0.5
  foreground_rotation: float = 30.0
  photographs: tuple[str, ...] = photographs.EVAL_PHOTOGRAPHS

  def __post_init__(self):
    for name, low in (('height', 16), ('width', 16), ('num_frames', 1), ('motion_frames', 2), ('tracks', 1)):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
    # The elastic bound keeps each row of its Jacobian below 2 pi 0.05 * 1.5 < 1/2 (so the warp is invertible);
    # the perspective bound keeps the view finite.
    for name, low, high in (('foreground_share', 0, 1), ('max_rotation', 0, 45), ('max_translation', 0, 0.5),
                            ('max_perspective', 0, 0.25), ('elastic_amplitude', 0, 0.05),
                            ('foreground_travel', 0, 2), ('foreground_rotation', 0, 180)):
      value = getattr(self, name)
      if not (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
              and low <= value <= high):
        raise ValueError(f'{name} must be a number in [{low}, {high}], got {value!r}')
    set_field = functools.partial(object.__setattr__, self)
    set_field('num_foreground', _check_pair('num_foreground', self.num_foreground, 0, MAX_FOREGROUND, True))
    set_field('zoom', _check_pair('zoom', self.zoom, 0.25, 4.0))
    set_field('foreground_radius', _check_pair('foreground_radius', self.foreground_radius, 0.01, 0.5))
    names = photographs.check_names(self.photographs, 'photographs')
    training = [n for n in names if n not in photographs.EVAL_PHOTOGRAPHS]
    if training:
      raise ValueError(f'photographs: {training} are not evaluation photographs; choose from '
                       f'{photographs.EVAL_PHOTOGRAPHS} (training textures never appear in this set)')
    set_field('photographs', names)


class Background(NamedTuple):
  """Layer 0: output pixel p at frame t shows texel H_t(p + d_t(p)) of `photo`."""
  photo: str
  homographies: np.ndarray  # [t, 3, 3] float64, raster pixels -> photograph texels
  elastic_weights: np.ndarray  # [2, m] pixels: displacement component c = sum_k w_ck sin(2 pi f_ck . p + phase)
  elastic_frequencies: np.ndarray  # [2, m, 2] cycles per pixel along (x, y)
  elastic_phases: np.ndarray  # [t, 2, m] radians


class CutOut(NamedTuple):
  """A foreground layer: shape coordinates o sit at raster T_t + L_t o; inside iff |o| < rho(angle of o)."""
  photo: str
  outline: np.ndarray  # [harmonics, 2] (a_m, psi_m), m = 2, 3, ...: rho = 1 + sum_m a_m cos(m phi + psi_m)
  placements: np.ndarray  # [t, 2, 3] float64 (L_t | T_t): shape coordinates -> raster pixels
  texture: np.ndarray  # [2, 3] float64: shape coordinates -> photograph texels


class RealPixScene(NamedTuple):
  """Everything `generate_clip` renders and tracks, as drawn by `sample_scene`."""
  background: Background
  cutouts: tuple[CutOut, ...]  # layers 1, 2, ... bottom to top
  anchors: np.ndarray  # [m, 3] float64 (t, x, y): candidate track anchors, a frame and a raster position

  @property
  def photos(self) -> tuple[str, ...]:  # the photograph of each layer, bottom to top
    return (self.background.photo,) + tuple(c.photo for c in self.cutouts)


# ---------------------------------------------------------------------------------------------------------------
# The maps. `frame` is an int or an int array broadcasting against the points' leading axes.


def _bezier(controls: np.ndarray, tau: np.ndarray) -> np.ndarray:  # [4, p], [t] in [0, 1] -> [t, p]
  tau = tau[:, None]
  return ((1 - tau) ** 3 * controls[0] + 3 * (1 - tau) ** 2 * tau * controls[1]
          + 3 * (1 - tau) * tau ** 2 * controls[2] + tau ** 3 * controls[3])


def _rotation(angle: np.ndarray) -> np.ndarray:  # [...] -> [..., 2, 2]
  c, s = np.cos(angle), np.sin(angle)
  return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _apply_homography(h: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """h [..., 3, 3] applied to points xy [..., 2] -> (uv [..., 2], Jacobian d(uv)/d(xy) [..., 2, 2])."""
  x, y = xy[..., 0], xy[..., 1]
  den = h[..., 2, 0] * x + h[..., 2, 1] * y + h[..., 2, 2]
  u = (h[..., 0, 0] * x + h[..., 0, 1] * y + h[..., 0, 2]) / den
  v = (h[..., 1, 0] * x + h[..., 1, 1] * y + h[..., 1, 2]) / den
  jac = [[(h[..., r, c] - w * h[..., 2, c]) / den for c in (0, 1)] for r, w in ((0, u), (1, v))]
  return np.stack([u, v], -1), np.stack([np.stack(row, -1) for row in jac], -2)


def _elastic(bg: Background, frame, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Displacement d_t(p) [..., 2] and its Jacobian [..., 2, 2] at raster points p [..., 2]."""
  phases = bg.elastic_phases[frame]  # [..., 2, m]
  d, jac = np.zeros(p.shape), np.zeros(p.shape + (2,))
  for c, k in np.ndindex(bg.elastic_weights.shape):  # a handful of modes: whole-array arithmetic per mode
    (fx, fy), weight = bg.elastic_frequencies[c, k], bg.elastic_weights[c, k]
    arg = 2 * np.pi * (fx * p[..., 0] + fy * p[..., 1]) + phases[..., c, k]
    d[..., c] += weight * np.sin(arg)
    slope = 2 * np.pi * weight * np.cos(arg)
    jac[..., c, 0] += slope * fx
    jac[..., c, 1] += slope * fy
  return d, jac


def background_texels(bg: Background, frame, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Texels s [..., 2] of raster points p [..., 2] and the Jacobian ds/dp [..., 2, 2] (texels per pixel)."""
  d, d_jac = _elastic(bg, frame, p)
  s, h_jac = _apply_homography(bg.homographies[frame], p + d)
  d_jac[..., 0, 0] += 1
  d_jac[..., 1, 1] += 1
  jac = [[h_jac[..., i, 0] * d_jac[..., 0, j] + h_jac[..., i, 1] * d_jac[..., 1, j] for j in (0, 1)] for i in (0, 1)]
  return s, np.stack([np.stack(row, -1) for row in jac], -2)


def background_positions(bg: Background, s: np.ndarray) -> np.ndarray:  # [n, 2] texels -> [n, t, 2] raster
  """Where texels s are at every frame: p + d_t(p) = H_t^-1(s), solved by Newton's method."""
  q, _ = _apply_homography(np.linalg.inv(bg.homographies), s[:, None])  # [n, t, 2] the undisplaced positions
  frame = np.arange(len(bg.homographies))
  p = q
  for _ in range(_NEWTON_STEPS):
    d, jac = _elastic(bg, frame, p)
    residual = p + d - q
    if np.abs(residual).max(initial=0) < NEWTON_TOLERANCE * 1e-3:
      break
    p = p - np.linalg.solve(np.eye(2) + jac, residual[..., None])[..., 0]
  d, _ = _elastic(bg, frame, p)
  worst = np.abs(p + d - q).max(initial=0)
  if worst > NEWTON_TOLERANCE:
    raise RuntimeError(f'background track inversion did not converge: residual {worst:.3g} px')
  return p


def shape_coordinates(cut: CutOut, frame, p: np.ndarray) -> np.ndarray:  # raster [..., 2] -> shape [..., 2]
  inverse = np.linalg.inv(cut.placements[:, :, :2])[frame]  # [..., 2, 2]
  d = p - cut.placements[frame, :, 2]
  return np.stack([inverse[..., 0, 0] * d[..., 0] + inverse[..., 0, 1] * d[..., 1],
                   inverse[..., 1, 0] * d[..., 0] + inverse[..., 1, 1] * d[..., 1]], -1)


def inside_shape(cut: CutOut, o: np.ndarray) -> np.ndarray:  # shape coordinates [..., 2] -> [...] bool
  """The one inside test, shared by the renderer and the occlusion truth."""
  r2 = o[..., 0] ** 2 + o[..., 1] ** 2
  near = r2 < (1 + np.abs(cut.outline[:, 0]).sum()) ** 2  # only these can be inside: skip the angles elsewhere
  phi = np.arctan2(o[..., 1][near], o[..., 0][near])
  m = np.arange(2, 2 + len(cut.outline))
  rho = 1 + np.sum(cut.outline[:, 0] * np.cos(m * phi[:, None] + cut.outline[:, 1]), -1)
  result = np.zeros(r2.shape, bool)
  result[near] = r2[near] < rho ** 2
  return result


def top_layer(scene: RealPixScene, frame, p: np.ndarray) -> np.ndarray:  # raster [..., 2] -> [...] int32
  top = np.zeros(p.shape[:-1], np.int32)
  for k, cut in enumerate(scene.cutouts, 1):
    top[inside_shape(cut, shape_coordinates(cut, frame, p))] = k
  return top


def footprint(jac: np.ndarray) -> np.ndarray:  # [..., 2, 2] texels per pixel -> [...] texels
  return np.maximum(np.hypot(jac[..., 0, 0], jac[..., 1, 0]), np.hypot(jac[..., 0, 1], jac[..., 1, 1]))


# ---------------------------------------------------------------------------------------------------------------
# Drawing a scene.


def _sample_background(rng: np.random.Generator, config: RealPixConfig, photo: str, tau: np.ndarray) -> Background:
  h, w = config.height, config.width
  side, centre = min(h, w), np.array([w / 2, h / 2])
  rot, shift, persp = math.radians(config.max_rotation), config.max_translation, config.max_perspective
  low = [math.log(config.zoom[0]), -rot, -shift, -shift, -persp, -persp]
  high = [math.log(config.zoom[1]), rot, shift, shift, persp, persp]
  log_zoom, angle, tx, ty, px, py = _bezier(rng.uniform(low, high, (4, 6)), tau).T  # each [t]
  view = np.zeros((len(tau), 3, 3))  # normalised frame (centre 0, shorter side 1) -> normalised photograph
  view[:, :2, :2] = _rotation(angle) / np.exp(log_zoom)[:, None, None]
  view[:, :2, 2] = np.stack([tx, ty], -1)
  view[:, 2] = np.stack([px, py, np.ones_like(px)], -1)
  to_unit = np.array([[1 / side, 0, -centre[0] / side], [0, 1 / side, -centre[1] / side], [0, 0, 1]])
  # Fit the view of the frame, grown by the elastic reach, into the photograph at every frame.
  reach = config.elastic_amplitude + 1 / side
  corners = np.array([(sx * (w / 2 / side + reach), sy * (h / 2 / side + reach), 1.0)
                      for sx in (-1, 1) for sy in (-1, 1)])
  seen = np.einsum('tij,cj->tci', view, corners)
  if seen[..., 2].min() < 0.2:
    raise ValueError(f'max_perspective {config.max_perspective} is too strong for a {h}x{w} frame')
  seen = (seen[..., :2] / seen[..., 2:]).reshape(-1, 2)
  lo, hi = seen.min(0), seen.max(0)
  photo_h, photo_w = photographs.load(photo).shape[:2]
  room = np.array([photo_w, photo_h]) - 2 * _PHOTO_MARGIN
  scale = rng.uniform(*_CROP_FILL) * np.min(room / (hi - lo))  # texels per normalised unit
  offset = _PHOTO_MARGIN + rng.uniform(0, 1, 2) * (room - scale * (hi - lo)) - scale * lo
  to_photo = np.array([[scale, 0, offset[0]], [0, scale, offset[1]], [0, 0, 1]])
  weights = rng.uniform(-1, 1, (2, _ELASTIC_MODES))
  weights *= config.elastic_amplitude * side / np.abs(weights).sum(-1, keepdims=True)
  magnitude = rng.uniform(*_ELASTIC_FREQUENCY, (2, _ELASTIC_MODES)) / side
  direction = rng.uniform(0, 2 * np.pi, (2, _ELASTIC_MODES))
  frequencies = np.stack([magnitude * np.cos(direction), magnitude * np.sin(direction)], -1)  # [2, m, 2]
  phase = rng.uniform(0, 2 * np.pi, (2, _ELASTIC_MODES)) - 2 * np.pi * frequencies @ centre  # about the centre
  drift = rng.uniform(-_ELASTIC_DRIFT, _ELASTIC_DRIFT, (2, _ELASTIC_MODES))
  phases = phase + 2 * np.pi * drift * tau[:, None, None]
  return Background(photo, to_photo @ view @ to_unit, weights, frequencies, phases)


def _sample_cutout(rng: np.random.Generator, config: RealPixConfig, photo: str, tau: np.ndarray) -> CutOut:
  h, w = config.height, config.width
  side = min(h, w)
  amplitude = rng.uniform(-1, 1, _OUTLINE_HARMONICS)
  amplitude *= _OUTLINE_ROUGHNESS * rng.uniform(0.2, 1) / np.abs(amplitude).sum()
  outline = np.stack([amplitude, rng.uniform(0, 2 * np.pi, _OUTLINE_HARMONICS)], -1)
  aspect = rng.uniform(*_ASPECT)
  start = np.concatenate([rng.uniform(-0.6, 0.6, 2) * [w / side, h / side],  # may start partly outside
                          [math.log(rng.uniform(*config.foreground_radius)), rng.uniform(0, 2 * np.pi)]])
  spread = [config.foreground_travel] * 2 + [_SIZE_CHANGE, math.radians(config.foreground_rotation)]
  controls = start + rng.uniform(-1, 1, (4, 4)) * spread
  controls[0] = start
  x, y, log_radius, angle = _bezier(controls, tau).T
  linear = side * np.exp(log_radius)[:, None, None] * _rotation(angle) @ np.diag([1.0, aspect])
  shift = np.array([w / 2, h / 2]) + side * np.stack([x, y], -1)
  placements = np.concatenate([linear, shift[..., None]], -1)
  photo_h, photo_w = photographs.load(photo).shape[:2]
  radius = rng.uniform(*_TEXTURE_RADIUS) * min(photo_h, photo_w)
  reach = (1 + np.abs(amplitude).sum()) * radius + _PHOTO_MARGIN
  texture_centre = reach + rng.uniform(0, 1, 2) * (np.array([photo_w, photo_h]) - 2 * reach)
  texture = np.concatenate([radius * _rotation(rng.uniform(0, 2 * np.pi)), texture_centre[:, None]], -1)
  return CutOut(photo, outline, placements, texture)


def sample_scene(seed: int, config: RealPixConfig) -> RealPixScene:
  """The scene of clip `seed` (a pure function of (seed, config)); see the module docstring."""
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
  rng = np.random.default_rng(int(seed))
  t = config.num_frames
  tau = np.arange(t) / (max(t, config.motion_frames) - 1)
  names = config.photographs
  first = int(rng.integers(len(names)))
  background = _sample_background(rng, config, names[first], tau)
  others = [n for i, n in enumerate(names) if i != first] or list(names)  # cut-outs from other photographs
  count = int(rng.integers(config.num_foreground[0], config.num_foreground[1] + 1))
  cutouts = tuple(_sample_cutout(rng, config, others[int(rng.integers(len(others)))], tau) for _ in range(count))
  m = _CANDIDATES_PER_TRACK * config.tracks
  anchors = np.stack([rng.integers(0, t, m), rng.uniform(0, 1, m) * config.width,
                      rng.uniform(0, 1, m) * config.height], -1)
  return RealPixScene(background, cutouts, anchors)


