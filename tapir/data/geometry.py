"""Rotations, cameras and projection: the 3-D geometry shared by `tapir.data.kubric` and `tapir.data.synthetic`.

Conventions (Kubric / MOVi-E, training_and_data.md §3.3; world is Z-up):
  quaternions   (w, x, y, z), unit length; `quaternion_to_matrix` gives the rotation R with world = R local.
  camera        camera-to-world `matrix_world` [4, 4] = [[R, c], [0, 1]]: R the camera rotation, c its centre. The
                camera looks along its local -Z, +Y up, +X right.
  intrinsics    normalised-image K = [[fx, 0, -1/2], [0, -fy, -1/2], [0, 0, -1]] with fx = focal / sensor_width and
                fy = fx * h / w (the MOVi quirk, §3.3). K maps camera coordinates to (u, v) in [0, 1]^2 across the
                image, (0, 0) the top-left corner; raster pixels are (u * w, v * h).
  boxes         the 8 corners of a box in MOVi-E's `bboxes_3d` order: x slowest, z fastest.

Everything is numpy, float64 unless stated.
"""

import numpy as np


# ---------------------------------------------------------------------------------------------------------------
# Rotations.


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # [..., 4] x [..., 4] -> [..., 4]
  """Hamilton product a * b of (w, x, y, z) quaternions (apply b, then a)."""
  aw, ax, ay, az = np.moveaxis(a, -1, 0)
  bw, bx, by, bz = np.moveaxis(b, -1, 0)
  return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                   aw * bx + ax * bw + ay * bz - az * by,
                   aw * by - ax * bz + ay * bw + az * bx,
                   aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:  # [..., 4] (w, x, y, z) -> [..., 3, 3] float64
  """The standard rotation matrix of a unit quaternion (the formula Kubric's camera code uses)."""
  w, x, y, z = np.moveaxis(np.asarray(q, np.float64), -1, 0)
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
  ], -2)


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:  # [3, 3] -> [4] (w, x, y, z), w >= 0
  """Inverse of `quaternion_to_matrix` for a proper rotation (Shepperd's method)."""
  trace = np.trace(m)
  diag = np.diag(m)
  i = int(np.argmax(np.concatenate([[trace], diag])))
  if i == 0:
    s = 2.0 * np.sqrt(1.0 + trace)
    q = np.array([s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
  else:
    a = i - 1
    b, c = (a + 1) % 3, (a + 2) % 3
    s = 2.0 * np.sqrt(1.0 + m[a, a] - m[b, b] - m[c, c])
    q = np.zeros(4)
    q[0] = (m[c, b] - m[b, c]) / s
    q[1 + a] = s / 4
    q[1 + b] = (m[a, b] + m[b, a]) / s
    q[1 + c] = (m[a, c] + m[c, a]) / s
  q = q / np.linalg.norm(q)
  return -q if q[0] < 0 else q


def random_quaternion(rng: np.random.Generator) -> np.ndarray:  # [4] (w, x, y, z)
  """A uniformly random rotation (a normalised 4-D Gaussian); draws 4 normals from `rng`."""
  q = rng.normal(size=4)
  return q / np.linalg.norm(q)


def look_at_quaternion(position: np.ndarray, target: np.ndarray) -> np.ndarray:  # [3], [3] -> [4]
  """Camera-to-world rotation (w, x, y, z) looking from `position` at `target` with world up +Z (§3.12)."""
  forward = target - position
  forward = forward / np.linalg.norm(forward)
  right = np.cross(forward, [0.0, 0.0, 1.0])
  if np.linalg.norm(right) < 1e-9:  # looking straight up or down: any horizontal right axis will do
    right = np.array([1.0, 0.0, 0.0])
  right = right / np.linalg.norm(right)
  back = -forward
  up = np.cross(back, right)
  return matrix_to_quaternion(np.stack([right, up, back], axis=1))


def box_corners(half: np.ndarray) -> np.ndarray:  # [3] -> [8, 3] float64, MOVi-E corner order
  """Corners (±half) of an axis-aligned box about the origin, x slowest and z fastest."""
  signs = np.array([(sx, sy, sz) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
  return signs * half


# ---------------------------------------------------------------------------------------------------------------
# Cameras.


def intrinsics_matrix(focal_length: float, sensor_width: float, height: int,
                      width: int) -> np.ndarray:  # [3, 3] float64
  """Normalised-image intrinsics K; fy = fx * h / w is the reference's (square-image) convention."""
  fx = float(focal_length) / float(sensor_width)
  fy = fx * height / width
  return np.array([[fx, 0.0, -0.5], [0.0, -fy, -0.5], [0.0, 0.0, -1.0]])


def matrix_world(positions: np.ndarray, rotations: np.ndarray) -> np.ndarray:  # [t, 3], [t, 3, 3] -> [t, 4, 4]
  """Camera-to-world matrices from camera centres and rotations."""
  positions = np.asarray(positions, np.float64)
  m = np.zeros((len(positions), 4, 4))
  m[:, :3, :3] = rotations
  m[:, :3, 3] = positions
  m[:, 3, 3] = 1.0
  return m


def pixel_rays(u: np.ndarray, v: np.ndarray, fx: float | np.ndarray,
               fy: float | np.ndarray) -> np.ndarray:  # [...], [...] -> [..., 3] unit, camera frame
  """Unit rays in camera coordinates through normalised image points (u, v) (broadcast together, and with the
  focal lengths fx, fy): K^-1 (u, v, 1), normalised."""
  rays = np.stack(np.broadcast_arrays((u - 0.5) / fx, (0.5 - v) / fy, -1.0), axis=-1)
  return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def project(points: np.ndarray, intrinsics: np.ndarray, matrix_world: np.ndarray) -> np.ndarray:
  """World points [n, t, 3] -> [n, t, 3]: (u, v) normalised raster ((0,0) top-left, (1,1) bottom-right), and
  the sign-carrying third coordinate (negative = behind the camera). intrinsics [t, 3, 3], matrix_world [t, 4, 4]
  camera-to-world."""
  world_to_camera = np.linalg.inv(matrix_world)  # [t, 4, 4]
  homogeneous = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], -1)
  camera = np.einsum('tij,ntj->nti', world_to_camera, homogeneous)[..., :3]
  q = np.einsum('tij,ntj->nti', intrinsics, camera)
  return np.concatenate([q[..., :2] / q[..., 2:], np.sign(q[..., 2:])], -1)


def unproject(rows: np.ndarray, cols: np.ndarray, frames: np.ndarray, depth: np.ndarray,
              intrinsics: np.ndarray, matrix_world: np.ndarray) -> np.ndarray:  # [n, 3] world points
  """Pixels (frame, row, col) [n] -> the world point their centre's ray hits at the Euclidean `depth` [t, h, w]
  (distance to the camera centre). intrinsics [t, 3, 3], matrix_world [t, 4, 4]."""
  h, w = depth.shape[1:3]
  u = (cols + 0.5) / w
  v = (rows + 0.5) / h
  k = intrinsics[frames]
  ray = pixel_rays(u, v, k[:, 0, 0], -k[:, 1, 1])  # [n, 3]
  camera = ray * depth[frames, rows, cols][:, None]
  m = matrix_world[frames]
  return np.einsum('nij,nj->ni', m[:, :3, :3], camera) + m[:, :3, 3]
