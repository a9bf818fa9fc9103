"""Rendering a scene into a MOVi-E example dict (the keys of TFDS `movi_e`, flattened with '/').

Every pixel's ray is cast analytically (numpy, vectorised over pixels, float32) against the floor, the dome and
each object (only inside the object's projected screen box), shaded with Lambertian + ambient light, and the MOVi-E
layers are written with MOVi-E's encodings (training_and_data.md §3.2), so that `tapir.data.kubric` turns them into
exact ground-truth tracks. The geometry conventions are those of `scene`.

Axis glossary: t frames, h, w pixels, k instances, n pixels or points of a flat list.
"""

from typing import NamedTuple, Sequence

import numpy as np

from tapir.data import geometry
from tapir.data.synthetic.scene import FOCAL_LENGTH, SENSOR_WIDTH, CameraPath, Scene, SceneConfig, SceneObject
from tapir.data.synthetic import camera_effects
from tapir.data.synthetic.scene import sample_scene
from tapir.data.synthetic.shading import shade
from tapir.data.synthetic.textures import linear

_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Ray casting. Arrays are channels-first ([3, n], [3, h, w]): numpy is slow at short trailing axes.


class _Buffers:
  """One frame's nearest hits: distance [h, w], surface id [h, w] (0 floor, 1 dome, 2 + object index), world
  normal [3, h, w] and mesh coordinates [3, h, w] (objects only)."""

  def __init__(self, dist: np.ndarray, surface: np.ndarray, normal: np.ndarray):
    self.dist = dist
    self.surface = surface
    self.normal = normal
    self.mesh = np.zeros_like(normal)

  def update(self, rows: slice, cols: slice, dist: np.ndarray, surface: int, normal: np.ndarray,
             mesh: np.ndarray):
    """Keeps the hits of one surface over the block rows x cols (dist [n], inf = miss; normal, mesh [3, n]) that
    are nearer than what the buffers hold."""
    block = self.dist[rows, cols]  # a view
    shape = block.shape
    nearer = dist.reshape(shape) < block
    if not nearer.any():
      return
    np.copyto(block, dist.reshape(shape), where=nearer)
    np.copyto(self.surface[rows, cols], np.int16(surface), where=nearer)
    np.copyto(self.normal[:, rows, cols], normal.reshape((3,) + shape), where=nearer)
    np.copyto(self.mesh[:, rows, cols], mesh.reshape((3,) + shape), where=nearer)


def _background(origin: np.ndarray, dirs: np.ndarray, dome_radius: float):
  """Floor (z = 0) and dome hits of unit rays [3, n] from `origin` [3] inside the dome.

  Returns:
    dist [n], is_floor [n] bool, world normal [3, n] (the dome's faces inwards).
  """
  origin = origin.astype(np.float32)
  dz = dirs[2]
  with np.errstate(divide='ignore'):
    t_floor = np.where(dz < -_EPS, -origin[2] / dz, np.float32(np.inf))
  b = linear(origin, dirs)  # [n]
  t_dome = -b + np.sqrt(b * b - np.float32(origin @ origin - dome_radius ** 2))
  is_floor = t_floor < t_dome
  dist = np.where(is_floor, t_floor, t_dome)
  normal = np.where(is_floor, np.float32([[0], [0], [1]]), (origin[:, None] + dist * dirs) / -np.float32(dome_radius))
  return dist, is_floor, normal


def _intersect_box(origin: np.ndarray, dirs: np.ndarray, half: np.ndarray):
  """Rays [3, n] (mesh frame, any length; distances come out in units of the ray length) from `origin` [3]
  into the box [-half, half]: entry distance [n] (inf on a miss), mesh point [3, n], mesh-frame normal [3, n]."""
  origin, half = origin[:, None], half[:, None]
  inverse = 1 / np.where(np.abs(dirs) < _EPS, np.float32(_EPS), dirs)
  t1 = (-half - origin) * inverse
  t2 = (half - origin) * inverse
  near = np.minimum(t1, t2)
  axis = np.argmax(near, axis=0)  # [n] the face the ray enters through
  t_enter = np.max(near, axis=0)
  t_exit = np.min(np.maximum(t1, t2), axis=0)
  hit = (t_enter <= t_exit) & (t_enter > _EPS)
  mesh = np.clip(origin + t_enter * dirs, -half, half)
  normal = (axis == np.arange(3)[:, None]) * -np.sign(dirs)
  return np.where(hit, t_enter, np.float32(np.inf)), mesh, normal.astype(np.float32)


def _intersect_sphere(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, radius: float):
  """Unit rays [3, n] from `origin` [3] into a sphere: entry distance [n] (inf on a miss), outward normal [3, n]."""
  offset = (origin - center).astype(np.float32)
  b = linear(offset, dirs)
  disc = b * b - np.float32(offset @ offset - radius * radius)
  t = -b - np.sqrt(np.maximum(disc, 0))
  t = np.where((disc >= 0) & (t > _EPS), t, np.float32(np.inf))
  normal = (offset[:, None] + np.where(np.isfinite(t), t, 0) * dirs) / np.float32(radius)
  return t, normal


def camera_rays(height: int, width: int) -> np.ndarray:  # [h, w, 3] float32, unit length, camera frame
  """Unit ray of every pixel centre in camera coordinates (§3.3 unprojection)."""
  k = geometry.intrinsics_matrix(FOCAL_LENGTH, SENSOR_WIDTH, height, width)
  u = (np.arange(width) + 0.5) / width
  v = (np.arange(height) + 0.5) / height
  return geometry.pixel_rays(u[None, :], v[:, None], k[0, 0], -k[1, 1]).astype(np.float32)


def _screen_box(corners: np.ndarray, intrinsics: np.ndarray, matrix_world: np.ndarray, height: int, width: int):
  """Row and column slices [y0, y1) x [x0, x1) that contain the projection of world `corners` [8, 3] by the camera
  intrinsics [1, 3, 3] and matrix_world [1, 4, 4], or None (off screen)."""
  projected = geometry.project(corners[:, None], intrinsics, matrix_world)[:, 0]  # [8, 3]
  if np.any(projected[:, 2] <= 0) or not np.isfinite(projected).all():
    return slice(0, height), slice(0, width)  # a corner at or behind the camera plane: test the whole frame
  x, y = projected[:, 0] * width, projected[:, 1] * height
  x0 = max(int(np.floor(x.min())) - 1, 0)
  x1 = min(int(np.ceil(x.max())) + 1, width)
  y0 = max(int(np.floor(y.min())) - 1, 0)
  y1 = min(int(np.ceil(y.max())) + 1, height)
  if x0 >= x1 or y0 >= y1:
    return None
  return slice(y0, y1), slice(x0, x1)


def _cast_objects(buffers: _Buffers, intrinsics: np.ndarray, matrix_world: np.ndarray, dirs: np.ndarray,
                  objects: Sequence[SceneObject], poses: Sequence['_Pose'], frame: int):
  """Ray-casts every object into one frame's buffers (rays `dirs` [3, h, w] from the centre of the camera
  intrinsics [1, 3, 3], matrix_world [1, 4, 4]); only pixels inside each object's screen box are tested."""
  _, height, width = dirs.shape
  origin = matrix_world[0, :3, 3]  # [3] float64
  for index, (obj, pose) in enumerate(zip(objects, poses)):
    window = _screen_box(pose.corners[frame], intrinsics, matrix_world, height, width)
    if window is None:
      continue
    rows, cols = window
    block = dirs[:, rows, cols].reshape(3, -1)  # [3, n] world unit rays
    center, turn = pose.positions[frame], pose.rotations[frame]  # [3], [3, 3]
    if obj.shape == 'sphere':
      dist, normal = _intersect_sphere(origin, block, center, obj.scale)
      mesh = linear(turn.T, normal)  # the mesh point of a unit sphere is its mesh-frame normal
    else:
      to_mesh = turn.T / np.float32(obj.scale)
      local_origin = (to_mesh @ (origin - center)).astype(np.float32)
      dist, mesh, local_normal = _intersect_box(local_origin, linear(to_mesh, block), obj.half.astype(np.float32))
      normal = linear(turn, local_normal)
    buffers.update(rows, cols, dist, 2 + index, normal, mesh)


# ---------------------------------------------------------------------------------------------------------------
# Rendering and MOVi-E encoding.


class _Pose(NamedTuple):
  """An object's motion over the clip, float32."""
  positions: np.ndarray  # [t, 3]
  rotations: np.ndarray  # [t, 3, 3]
  quaternions: np.ndarray  # [t, 4] (w, x, y, z)
  corners: np.ndarray  # [t, 8, 3] world corners of the scaled mesh box, MOVi-E order


def _object_pose(obj: SceneObject, num_frames: int) -> _Pose:
  positions, quaternions = obj.pose(num_frames)
  rotations = geometry.quaternion_to_matrix(quaternions)  # [t, 3, 3]
  corners = positions[:, None] + obj.scale * geometry.box_corners(obj.half) @ np.swapaxes(rotations, 1, 2)
  return _Pose(positions, rotations.astype(np.float32), quaternions, corners.astype(np.float32))


def _camera_poses(camera: CameraPath, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Positions [t, 3] and quaternions [t, 4], float32, as stored in the example."""
  return camera.positions(num_frames).astype(np.float32), camera.quaternions(num_frames).astype(np.float32)


def _encode_unit(x: np.ndarray) -> np.ndarray:
  """[0, 1] floats -> uint16 (x 65535, truncated), as MOVi-E."""
  return (np.clip(x, 0, 1) * np.float32(65535)).astype(np.uint16)


def _channels_last(x: np.ndarray) -> np.ndarray:  # [3, t, h, w] -> [t, h, w, 3] contiguous
  return np.ascontiguousarray(np.moveaxis(x, 0, -1))


def _relabel(surface: np.ndarray, num_objects: int) -> tuple[np.ndarray, np.ndarray]:
  """MOVi-E instance order: drop never-visible objects, sort by visible pixels (desc.). Returns the kept object
  indices [k] and the segmentation [t, h, w] uint8 (0 background, i + 1 = kept[i])."""
  counts = np.bincount(surface.reshape(-1), minlength=num_objects + 2)[2:]  # [objects]
  order = np.argsort(-counts, kind='stable')
  kept = order[counts[order] > 0]
  lookup = np.zeros(num_objects + 2, np.uint8)
  lookup[2 + kept] = np.arange(1, len(kept) + 1)
  return kept, lookup[surface]


def render_scene(scene: Scene, config: SceneConfig) -> dict[str, np.ndarray]:
  """Renders `scene` into a MOVi-E example dict (the keys of TFDS `movi_e`, flattened with '/').

  Returns:
    video uint8 [t, h, w, 3]; segmentations uint8 [t, h, w, 1]; depth uint16 [t, h, w, 1] (distance to the camera
    centre, scaled to metadata/depth_range); normal uint16 [t, h, w, 3] ((n + 1) / 2 * 65535); object_coordinates
    uint16 [t, h, w, 3]; camera/{focal_length, sensor_width, field_of_view} float32 scalars, camera/positions
    [t, 3], camera/quaternions [t, 4]; instances/{positions [k, t, 3], quaternions [k, t, 4], bboxes_3d
    [k, t, 8, 3], scale [k]} float32; metadata/{num_frames, height, width} int32, metadata/num_instances uint16,
    metadata/depth_range float32 [2].
  """
  t, h, w = config.num_frames, config.height, config.width
  cam_positions, cam_quaternions = _camera_poses(scene.camera, t)  # [t, 3], [t, 4]
  cam_rotations = geometry.quaternion_to_matrix(cam_quaternions).astype(np.float32)  # [t, 3, 3]
  intrinsics = geometry.intrinsics_matrix(FOCAL_LENGTH, SENSOR_WIDTH, h, w)[None]  # [1, 3, 3]
  matrix_world = geometry.matrix_world(cam_positions, cam_rotations)  # [t, 4, 4]
  rays = camera_rays(h, w).reshape(-1, 3).T  # [3, h * w] camera frame
  poses = [_object_pose(obj, t) for obj in scene.objects]

  dist = np.empty((t, h, w), np.float32)
  surface = np.empty((t, h, w), np.int16)
  normal = np.empty((3, t, h, w), np.float32)
  mesh = np.empty((3, t, h, w), np.float32)
  dirs = np.empty((3, t, h, w), np.float32)
  for f in range(t):
    origin = cam_positions[f].astype(np.float64)
    frame_dirs = linear(cam_rotations[f], rays)  # [3, h * w] world
    bg_dist, is_floor, bg_normal = _background(origin, frame_dirs, config.dome_radius)
    buffers = _Buffers(bg_dist.reshape(h, w), np.where(is_floor, 0, 1).astype(np.int16).reshape(h, w),
                       bg_normal.reshape(3, h, w))
    frame_dirs = frame_dirs.reshape(3, h, w)
    _cast_objects(buffers, intrinsics, matrix_world[f:f + 1], frame_dirs, scene.objects, poses, f)
    dist[f], surface[f], normal[:, f], mesh[:, f], dirs[:, f] = (buffers.dist, buffers.surface, buffers.normal,
                                                                 buffers.mesh, frame_dirs)

  flat_dirs, flat_normal, flat_dist = dirs.reshape(3, t, -1), normal.reshape(3, t, -1), dist.reshape(t, -1)
  points = cam_positions.T[:, :, None] + flat_dist * flat_dirs  # [3, t, h * w] world
  cosine = np.abs(flat_normal[0] * flat_dirs[0] + flat_normal[1] * flat_dirs[1] + flat_normal[2] * flat_dirs[2])
  footprint = flat_dist * np.float32(SENSOR_WIDTH / FOCAL_LENGTH / w) / np.maximum(cosine, 0.2)  # [t, h * w]
  flat_surface, flat_mesh = surface.reshape(t, -1), mesh.reshape(3, t, -1)
  rgb = shade(scene, poses, flat_surface, points, flat_mesh, flat_normal, footprint, config.dome_radius,
              config.shadows)  # [3, t, h * w]
  video = np.moveaxis(rgb.reshape(3, t, h, w), 0, -1)  # [t, h, w, 3]
  if scene.effects is not None and camera_effects.changes_pixels(scene.effects):
    flow = None  # the true image motion is only needed for motion blur
    if scene.effects.shutter > 0:
      flow = image_motion(poses, surface, points.reshape(3, t, h, w), flat_mesh.reshape(3, t, h, w),
                          scene.objects, intrinsics[0], matrix_world)
    # Lens blur is drawn for a 256-pixel-wide frame (TAP-Vid's): the same lens blurs fewer pixels of a smaller one.
    draw = scene.effects._replace(aperture_px=scene.effects.aperture_px * w / 256)
    video = camera_effects.apply_effects(video, dist, flow, draw, np.random.default_rng(scene.effects_seed))

  kept, segmentation = _relabel(surface, len(scene.objects))
  is_object = surface >= 2
  halves = np.stack([np.float32(o.half) for o in scene.objects] + [np.ones(3, np.float32)])  # [objects + 1, 3]
  object_half = halves[np.where(is_object, surface - 2, -1)]  # [t, h, w, 3]
  unit = np.moveaxis(mesh, 0, -1) / (2 * object_half) + np.float32(0.5)
  depth_range = np.array([dist.min(), dist.max()], np.float32)
  span = max(depth_range[1] - depth_range[0], np.float32(1e-6))

  example = {
      'video': np.ascontiguousarray(np.round(video * 255).astype(np.uint8)),
      'segmentations': segmentation[..., None],
      'depth': _encode_unit((dist - depth_range[0]) / span)[..., None],
      'normal': _channels_last(_encode_unit((normal + 1) / 2)),
      'object_coordinates': np.where(is_object[..., None], _encode_unit(unit), np.uint16(0)),
      'camera/focal_length': np.float32(FOCAL_LENGTH),
      'camera/sensor_width': np.float32(SENSOR_WIDTH),
      'camera/field_of_view': np.float32(2 * np.arctan(SENSOR_WIDTH / 2 / FOCAL_LENGTH)),
      'camera/positions': cam_positions,
      'camera/quaternions': cam_quaternions,
      'metadata/num_frames': np.int32(t),
      'metadata/num_instances': np.uint16(len(kept)),
      'metadata/height': np.int32(h),
      'metadata/width': np.int32(w),
      'metadata/depth_range': depth_range,
  }
  example.update(_instance_fields(scene, poses, kept, t))
  return example


def image_motion(poses: Sequence[_Pose], surface: np.ndarray, points: np.ndarray, mesh: np.ndarray,
                 objects: Sequence[SceneObject], intrinsics: np.ndarray, matrix_world: np.ndarray) -> np.ndarray:
  """The true image motion [t, h, w, 2] (x, y pixels) of every pixel's surface point from frame f to f + 1 (the
  last frame: from f - 1 to f), for motion blur: the point moved with its surface and projected again.

  Args:
    poses: the objects' motions.
    surface: [t, h, w] 0 floor, 1 dome, 2 + object index.
    points: [3, t, h, w] world points.
    mesh: [3, t, h, w] mesh coordinates (objects).
    objects: the scene's objects.
    intrinsics: [3, 3].
    matrix_world: [t, 4, 4] camera-to-world.
  """
  _, t, h, w = points.shape
  flow = np.zeros((t, h, w, 2), np.float32)
  if t < 2:
    return flow
  world_to_camera = np.linalg.inv(matrix_world).astype(np.float32)  # [t, 4, 4]
  cols = np.tile(np.arange(w, dtype=np.float32) + 0.5, h)
  rows = np.repeat(np.arange(h, dtype=np.float32) + 0.5, w)
  for f in range(t):
    g = f + 1 if f + 1 < t else f - 1
    moved = points[:, f].reshape(3, -1).copy()  # background points stay put
    frame_surface, frame_mesh = surface[f].reshape(-1), mesh[:, f].reshape(3, -1)
    for index, (obj, pose) in enumerate(zip(objects, poses)):
      where = np.flatnonzero(frame_surface == index + 2)
      if where.size:
        moved[:, where] = (pose.positions[g][:, None]
                           + np.float32(obj.scale) * linear(pose.rotations[g], frame_mesh[:, where]))
    camera = linear(world_to_camera[g, :3, :3], moved) + world_to_camera[g, :3, 3:4]
    q = linear(intrinsics.astype(np.float32), camera)
    ahead = q[2] > _EPS
    denominator = np.where(ahead, q[2], np.float32(1))
    dx = np.where(ahead, q[0] / denominator * w - cols, 0)
    dy = np.where(ahead, q[1] / denominator * h - rows, 0)
    sign = np.float32(1 if g > f else -1)
    flow[f] = sign * np.stack([dx, dy], -1).reshape(h, w, 2)
  return flow


def _instance_fields(scene: Scene, poses: Sequence[_Pose], kept: np.ndarray, num_frames: int):
  """instances/* (float32) of the kept objects, in MOVi-E order."""
  k, t = len(kept), num_frames
  return {
      'instances/positions': np.array([poses[i].positions for i in kept], np.float32).reshape(k, t, 3),
      'instances/quaternions': np.array([poses[i].quaternions for i in kept], np.float32).reshape(k, t, 4),
      'instances/bboxes_3d': np.array([poses[i].corners for i in kept], np.float32).reshape(k, t, 8, 3),
      'instances/scale': np.array([scene.objects[i].scale for i in kept], np.float32),
  }


def generate_scene(seed: int, config: SceneConfig = SceneConfig()) -> dict[str, np.ndarray]:
  """A MOVi-E example dict (see `render_scene`), a pure function of (seed, config)."""
  return render_scene(sample_scene(seed, config), config)
