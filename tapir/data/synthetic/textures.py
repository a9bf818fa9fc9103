"""Solid textures of the procedural scenes: sampling them and evaluating their colour at surface points.

A texture is a function of a point in texture space (world units for the floor and dome, mesh units for objects):
a checker, stripes or smooth noise pattern blending three colours, with a fine multiplicative detail on top, faded
where a pixel is too coarse to resolve it (cheap anti-aliasing). Arrays are channels-first ([3, n]).
"""

import colorsys
import dataclasses
from typing import Sequence

import numpy as np

from tapir.data import geometry

TEXTURE_KINDS = ('checker', 'stripes', 'noise')


@dataclasses.dataclass(frozen=True)
class Texture:
  """A solid (3-D) texture: colour as a function of a point in texture space (world or mesh units).

  Attributes:
    kind: one of TEXTURE_KINDS.
    colors: [3, 3] RGB in [0, 1]; the pattern blends colors[0] and colors[1], noise also colors[2].
    frequency: pattern cells per unit.
    rotation: [3, 3] orientation of the pattern.
    waves: [3, m] wave vectors of the smooth noise (cycles per unit, before `frequency`), m sinusoids.
    phases: [m] phases of the noise sinusoids.
    detail_waves: [3, m] wave vectors of the fine multiplicative detail that every kind carries.
    detail_phases: [m].
    detail_amplitude: strength of the detail (fraction of the brightness).
  """
  kind: str
  colors: np.ndarray
  frequency: float
  rotation: np.ndarray
  waves: np.ndarray
  phases: np.ndarray
  detail_waves: np.ndarray
  detail_phases: np.ndarray
  detail_amplitude: float


def linear(m: np.ndarray, x: np.ndarray) -> np.ndarray:  # [k, 3] x [3, n] -> [k, n] (or [3] x [3, n] -> [n])
  """m @ x for a tiny m, without BLAS: its threads only burn the cores that training needs for such shapes."""
  m = np.asarray(m, np.float32)
  if m.ndim == 1:
    return m[0] * x[0] + m[1] * x[1] + m[2] * x[2]
  return m[:, 0:1] * x[0] + m[:, 1:2] * x[1] + m[:, 2:3] * x[2]


def _random_color(rng: np.random.Generator) -> np.ndarray:  # [3]
  return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.25, 1.0), rng.uniform(0.35, 1.0)))


def sample_texture(rng: np.random.Generator, kinds: Sequence[str], frequency: tuple[float, float]) -> Texture:
  """A random texture of one of `kinds`, with `frequency` cells per unit drawn log-uniformly."""
  kind = kinds[rng.integers(len(kinds))]
  first = _random_color(rng)
  second = _random_color(rng)
  # Keep the two main colours apart in brightness so that the pattern survives greyscale augmentation.
  if abs(first.mean() - second.mean()) < 0.25:
    second = np.clip(second * (0.4 if first.mean() > 0.5 else 1.8), 0, 1)
  colors = np.stack([first, second, _random_color(rng)])
  num_waves, num_detail = 6, 4
  directions = rng.normal(size=(3, num_waves))
  waves = directions / np.linalg.norm(directions, axis=0) * 2.0 ** rng.uniform(-1.5, 1.5, size=num_waves)
  directions = rng.normal(size=(3, num_detail))
  detail_waves = directions / np.linalg.norm(directions, axis=0) * 2.0 ** rng.uniform(1.5, 3.0, size=num_detail)
  return Texture(
      kind=kind, colors=colors.astype(np.float32),
      frequency=float(np.exp(rng.uniform(np.log(frequency[0]), np.log(frequency[1])))),
      rotation=geometry.quaternion_to_matrix(geometry.random_quaternion(rng)).astype(np.float32),
      waves=waves.astype(np.float32), phases=rng.uniform(0, 2 * np.pi, num_waves).astype(np.float32),
      detail_waves=detail_waves.astype(np.float32),
      detail_phases=rng.uniform(0, 2 * np.pi, num_detail).astype(np.float32),
      detail_amplitude=float(rng.uniform(0.1, 0.3)))


def _band_limit(frequency: np.ndarray, footprint: np.ndarray) -> np.ndarray:
  """Attenuation of a pattern of `frequency` (cycles per unit) seen through a pixel `footprint` (units) wide."""
  return np.clip(1.5 - 1.5 * frequency * footprint, 0.0, 1.0)


def evaluate_texture(texture: Texture, points: np.ndarray, footprint: np.ndarray) -> np.ndarray:
  """RGB albedo [3, n] in [0, 1] at texture-space points [3, n].

  `footprint` [n] is the pixel size in the same units, used to fade the patterns that a pixel cannot resolve
  (cheap anti-aliasing).
  """
  q = linear(texture.rotation * np.float32(texture.frequency), points)  # [3, n] in pattern cells
  cells = footprint * np.float32(texture.frequency)  # [n] pixel size in cells
  noise = _waves(q, texture.waves, texture.phases, cells, weighted=True) * np.float32(1.2)  # [n] about [-1, 1]
  if texture.kind == 'checker':
    parity = (np.floor(q[0]) + np.floor(q[1]) + np.floor(q[2])) % 2  # [n] in {0, 1}
    level = 0.5 + (parity - 0.5) * _band_limit(np.float32(0.7), cells)
    mix = np.clip(0.3 * noise, 0, 1)
  elif texture.kind == 'stripes':
    wave = np.sin(np.float32(2 * np.pi) * q[0] + texture.phases[0])
    level = 0.5 + 0.5 * np.clip(2.5 * wave, -1, 1) * _band_limit(np.float32(1.0), cells)
    mix = np.clip(0.3 * noise, 0, 1)
  else:  # smooth noise through all three colours
    level = np.clip(0.5 + noise, 0, 1)
    mix = np.clip(0.5 - noise, 0, 1) * np.float32(0.6)
  detail = _waves(q, texture.detail_waves, texture.detail_phases, cells, weighted=False)  # [n]
  c = texture.colors[:, :, None]  # [3 colours, 3 channels, 1]
  albedo = c[0] + level * (c[1] - c[0])  # [3, n]
  albedo = (albedo + mix * (c[2] - albedo)) * (1 + np.float32(texture.detail_amplitude) * detail)
  return np.clip(albedo, 0, 1)


def _waves(q: np.ndarray, waves: np.ndarray, phases: np.ndarray, cells: np.ndarray, weighted: bool) -> np.ndarray:
  """Band-limited sum of sinusoids sin(2 pi w.q + phase) at points q [3, n] for wave vectors [3, m] -> [n].

  weighted: amplitudes 1 / |w| (smooth, 1/f noise) normalised to sum 1; otherwise the mean of equal amplitudes.
  """
  norms = np.linalg.norm(waves, axis=0)[:, None]  # [m, 1]
  weights = (1 / norms) / (1 / norms).sum() if weighted else np.full_like(norms, 1 / len(norms))
  amplitude = _band_limit(norms, cells[None]) * weights.astype(np.float32)  # [m, n]
  return (np.sin(linear(np.float32(2 * np.pi) * waves.T, q) + phases[:, None]) * amplitude).sum(0)
