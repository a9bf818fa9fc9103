"""Photographic textures of the procedural scenes: crops of real photographs mapped through each surface's own
coordinates, so that a surface point keeps its colour as it moves (tracks stay exact).

Mappings (`evaluate_photo_texture`'s `mapping`):
  'planar'     2-D surface coordinates (s, t) in surface units: the floor's world (x, y); a box face's two in-face
               mesh coordinates (each face shifted to its own part of the photograph).
  'spherical'  a unit direction d (a sphere's mesh point, the dome's point / radius), turned by the texture's
               `orientation`, as longitude and latitude; the longitude covers `tiles` mirrored copies of the
               photograph's width, so the seam is continuous.
The photograph is placed by a rotation `angle` (planar), a scale `texels_per_unit` (texels per surface unit; per
radian for 'spherical') and an `offset` in texels, and tinted by a per-channel `gain`. Reads go through the
photograph's mip-map (`tapir.data.photographs.sample`) with the screen pixel's footprint converted to texels.
Arrays are channels-first ([3, n]).
"""

import dataclasses
from typing import Sequence

import numpy as np

from tapir.data import geometry
from tapir.data import photographs
from tapir.data.synthetic.textures import linear

MAPPINGS = ('planar', 'spherical')


@dataclasses.dataclass(frozen=True)
class PhotoTexture:
  """A photograph placed on a surface.

  Attributes:
    photograph: a `tapir.data.photographs` name.
    texels_per_unit: level-0 texels per surface unit ('planar') or per radian ('spherical').
    angle: rotation of the photograph in the surface plane, radians ('planar').
    orientation: [3, 3] rotation applied to directions before the longitude / latitude ('spherical').
    tiles: mirrored copies of the photograph's width around the longitude ('spherical'); sets texels_per_unit.
    offset: [2] texel offset (u, v).
    gain: [3] per-channel colour gain (brightness and tint jitter).
  """
  photograph: str
  texels_per_unit: float
  angle: float
  orientation: np.ndarray
  tiles: int
  offset: np.ndarray
  gain: np.ndarray


def sample_photo_texture(rng: np.random.Generator, names: Sequence[str], mapping: str,
                         size: tuple[float, float]) -> PhotoTexture:
  """A random photograph placement.

  `size` is the range of the surface extent the photograph's width covers: surface units for 'planar' (drawn
  log-uniformly), or the number of mirrored tiles around the longitude for 'spherical' (integers, inclusive).
  """
  if mapping not in MAPPINGS:
    raise ValueError(f'mapping must be one of {MAPPINGS}, got {mapping!r}')
  name = names[rng.integers(len(names))]
  width = photographs.load(name).shape[1]
  if mapping == 'planar':
    extent = float(np.exp(rng.uniform(np.log(size[0]), np.log(size[1]))))
    tiles = 0
    texels_per_unit = width / extent
  else:
    tiles = int(rng.integers(int(size[0]), int(size[1]) + 1))
    texels_per_unit = tiles * width / np.pi  # 2 * tiles widths per turn of longitude
  brightness = rng.uniform(0.7, 1.25)
  gain = brightness * np.exp(rng.normal(0, 0.12, size=3))
  return PhotoTexture(
      photograph=name, texels_per_unit=float(texels_per_unit), angle=float(rng.uniform(0, 2 * np.pi)),
      orientation=geometry.quaternion_to_matrix(geometry.random_quaternion(rng)).astype(np.float32), tiles=tiles,
      offset=rng.uniform(0, 2 * width, size=2).astype(np.float32), gain=gain.astype(np.float32))


def box_face_coordinates(mesh: np.ndarray, half: np.ndarray) -> np.ndarray:  # [3, n], [3] -> [2, n]
  """Planar coordinates of points on a box's faces: the two in-face mesh coordinates, each of the six faces
  shifted by its own offset (in mesh units) so that faces show different parts of the photograph."""
  relative = np.abs(mesh) / half.astype(np.float32)[:, None]
  axis = np.argmax(relative, axis=0)  # [n] the face's normal axis
  side = (mesh[axis, np.arange(mesh.shape[1])] > 0).astype(np.int64)  # [n] which of its two faces
  face = 2 * axis + side  # [n] in 0 .. 5
  first = np.where(axis == 0, mesh[1], mesh[0])
  second = np.where(axis == 2, mesh[1], mesh[2])
  shift = np.float32(2.7) * face.astype(np.float32)
  return np.stack([first + shift, second - shift])


def evaluate_photo_texture(texture: PhotoTexture, mapping: str, coords: np.ndarray,
                           footprint: np.ndarray) -> np.ndarray:
  """RGB albedo [3, n] in [0, 1].

  Args:
    texture: the placement.
    mapping: 'planar' (coords [2, n] surface units) or 'spherical' (coords [3, n] unit directions).
    coords: see `mapping`.
    footprint: [n] the screen pixel's size on the surface, in surface units ('spherical': radians).
  """
  levels = photographs.pyramid(texture.photograph)
  scale = np.float32(texture.texels_per_unit)
  if mapping == 'planar':
    c, s = np.float32(np.cos(texture.angle)), np.float32(np.sin(texture.angle))
    u = (c * coords[0] - s * coords[1]) * scale
    v = (s * coords[0] + c * coords[1]) * scale
    texels = footprint * scale
  elif mapping == 'spherical':
    d = linear(texture.orientation, coords)
    longitude = np.arctan2(d[1], d[0])
    latitude = np.arcsin(np.clip(d[2], -1, 1))
    u, v = longitude * scale, latitude * scale
    # Along the longitude a radian of arc spans 1 / cos(latitude) radians of longitude: the larger footprint.
    texels = footprint * scale / np.maximum(np.cos(latitude), np.float32(1e-3))
  else:
    raise ValueError(f'mapping must be one of {MAPPINGS}, got {mapping!r}')
  colour = photographs.sample(levels, u + texture.offset[0], v + texture.offset[1], texels)
  return np.clip(colour * texture.gain[:, None], 0, 1)
