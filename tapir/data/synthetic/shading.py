"""Shading of one rendered frame: albedo from each surface's texture (procedural or photographic) times the light
(ambient + Lambertian directional light, with the objects' cast shadows when the scene config asks for them).

The dome glows (Kubric's dome is lit by its own HDRI): it gets no directional shading. Shadow rays leave each
lit surface point towards the light and are tested against every object analytically (a box's slabs, a sphere's
quadratic), after a cheap bounding-sphere test. Arrays are channels-first ([3, n]).
"""

from typing import Sequence

import numpy as np

from tapir.data.synthetic.photo_textures import PhotoTexture, box_face_coordinates, evaluate_photo_texture
from tapir.data.synthetic.scene import Scene, SceneObject
from tapir.data.synthetic.textures import evaluate_texture, linear

_SHADOW_EPS = np.float32(1e-3)  # world units: shadow rays start this far off the surface


def _albedo(texture, surface_index: int, scene: Scene, dome_radius: float, points: np.ndarray, mesh: np.ndarray,
            footprint: np.ndarray) -> np.ndarray:  # -> [3, n]
  """Albedo of one surface's pixels: world points, mesh coordinates [3, n], world footprints [n]."""
  if surface_index < 2:  # floor (world x, y) or dome (direction from the origin)
    if not isinstance(texture, PhotoTexture):
      return evaluate_texture(texture, points, footprint)
    if surface_index == 0:
      return evaluate_photo_texture(texture, 'planar', points[:2], footprint)
    radius = np.float32(dome_radius)
    return evaluate_photo_texture(texture, 'spherical', points / radius, footprint / radius)
  obj = scene.objects[surface_index - 2]
  scale = np.float32(obj.scale)
  if not isinstance(texture, PhotoTexture):
    return evaluate_texture(texture, mesh, footprint / scale)
  if obj.shape == 'sphere':
    return evaluate_photo_texture(texture, 'spherical', mesh, footprint / scale)
  return evaluate_photo_texture(texture, 'planar', box_face_coordinates(mesh, obj.half), footprint / scale)


def _blocked(obj: SceneObject, position: np.ndarray, rotation: np.ndarray, starts: np.ndarray,
             light: np.ndarray) -> np.ndarray:  # -> [n] bool
  """Whether rays from `starts` [3, n] along the unit `light` [3] hit `obj` (at `position` [3], `rotation`
  [3, 3] this frame) in front of them."""
  offset = starts - position.astype(np.float32)[:, None]  # [3, n]
  along = linear(light, offset)  # [n]
  radius = np.float32(obj.scale * (1.0 if obj.shape == 'sphere' else np.linalg.norm(obj.half)))
  near = (along < radius) & ((offset * offset).sum(0) - along * along < radius * radius)  # bounding sphere
  hit = np.zeros(starts.shape[1], bool)
  where = np.flatnonzero(near)
  if not where.size:
    return hit
  offset, along = offset[:, where], along[where]
  if obj.shape == 'sphere':
    disc = along * along - ((offset * offset).sum(0) - radius * radius)
    hit[where] = (disc >= 0) & (-along + np.sqrt(np.maximum(disc, 0)) > _SHADOW_EPS)
    return hit
  to_mesh = (rotation.T / np.float32(obj.scale)).astype(np.float32)
  origin = linear(to_mesh, offset)  # [3, m] mesh frame
  direction = to_mesh @ light.astype(np.float32)  # [3]
  direction = np.where(np.abs(direction) < 1e-9, np.float32(1e-9), direction)[:, None]
  half = obj.half.astype(np.float32)[:, None]
  t1, t2 = (-half - origin) / direction, (half - origin) / direction
  enter = np.minimum(t1, t2).max(0)
  leave = np.maximum(t1, t2).min(0)
  hit[where] = (enter <= leave) & (leave > _SHADOW_EPS)
  return hit


def shade(scene: Scene, poses: Sequence, surface: np.ndarray, points: np.ndarray, mesh: np.ndarray,
          normal: np.ndarray, footprint: np.ndarray, dome_radius: float, shadows: bool) -> np.ndarray:
  """Linear RGB [3, t, n] in [0, 1] of every frame's pixels.

  Args:
    scene: the scene.
    poses: per object, its motion (`positions` [t, 3], `rotations` [t, 3, 3]).
    surface: [t, n] 0 floor, 1 dome, 2 + object index.
    points: [3, t, n] world points.
    mesh: [3, t, n] mesh coordinates (objects).
    normal: [3, t, n] world normals.
    footprint: [t, n] pixel size on the surface, world units.
    dome_radius: the dome's radius.
    shadows: cast the objects' shadows.
  """
  light_direction = scene.light_direction.astype(np.float32)
  diffuse = np.maximum(linear(light_direction, normal), 0)  # [t, n]
  if shadows and scene.objects:
    for f in range(surface.shape[0]):  # the objects move: one frame's poses at a time
      lit = np.flatnonzero((diffuse[f] > 0) & (surface[f] != 1))
      starts = points[:, f, lit] + _SHADOW_EPS * normal[:, f, lit]
      shadowed = np.zeros(lit.size, bool)
      for obj, pose in zip(scene.objects, poses):
        shadowed |= _blocked(obj, pose.positions[f], pose.rotations[f], starts, light_direction)
      diffuse[f, lit[shadowed]] = 0
  light = (np.float32(scene.ambient) + np.float32(1 - scene.ambient) * diffuse).reshape(-1)
  flat_surface, flat_points = surface.reshape(-1), points.reshape(3, -1)
  flat_mesh, flat_footprint = mesh.reshape(3, -1), footprint.reshape(-1)
  rgb = np.empty_like(flat_points)
  textures = [scene.floor_texture, scene.dome_texture] + [o.texture for o in scene.objects]
  for index, texture in enumerate(textures):
    where = np.flatnonzero(flat_surface == index)
    if not where.size:
      continue
    albedo = _albedo(texture, index, scene, dome_radius, flat_points[:, where], flat_mesh[:, where],
                     flat_footprint[where])
    rgb[:, where] = albedo if index == 1 else albedo * light[where]
  return rgb.reshape(points.shape)
