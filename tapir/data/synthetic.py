"""Procedural Kubric-like scenes that emit MOVi-E example dicts (the built-in training and evaluation data).

A scene is a textured floor (the plane z = 0) inside a textured dome (a sphere of radius `dome_radius` about the
origin), both background (segment 0), plus textured boxes and spheres: static ones resting on the floor, dynamic
ones sliding, rolling or tumbling along straight lines with constant velocity and spin. A camera follows the
(panning) MOVi-E trajectory of training_and_data.md §3.12. Every pixel's ray is cast analytically (numpy, vectorised
over pixels, float32), shaded with Lambertian + ambient light, and the MOVi-E layers are written with MOVi-E's
encodings (§3.2), so that `tapir.data.kubric` turns them into exact ground-truth tracks.

Geometry (all in world units, world is Z-up):
  camera    position c_t, rotation R_t = R(q_t) camera-to-world (w, x, y, z); looks along local -Z, +Y up, +X
            right; intrinsics fx = focal / sensor_width, fy = fx * h / w (the MOVi quirk, §3.3). The ray of pixel
            (i, j) is R_t r / |r|, r = ((u - 0.5) / fx, (0.5 - v) / fy, -1), (u, v) = ((j + .5) / w, (i + .5) / h);
            `depth` is the distance along that unit ray (Euclidean distance to the camera centre).
  objects   a mesh box of half sizes `half` (a sphere: the unit sphere, half = 1) scaled by `scale`, rotated by
            R(q_t) and translated to p_t: world point P = p_t + scale * R(q_t) m for mesh point m in [-half, half].
            `object_coordinates` = m / (2 half) + 1/2 in [0, 1]^3; `instances/bboxes_3d` = p_t + scale R(q_t) corner,
            corners (±half) with x slowest and z fastest. Hence decoded coordinates (v / 65535 - 1/2) map to the
            world through the affine least-squares fit of the unit cube onto `bboxes_3d` exactly.

Axis glossary: t frames, h, w pixels, k instances, n pixels or points of a flat list.

Seeds: `generate_scene(seed)` is a pure function of (seed, config). Evaluation uses `EVAL_SEEDS` (0 .. 9999);
training uses seeds from `TRAIN_SEED_OFFSET` (10**6) upwards, so the two never overlap.
"""

import colorsys
import dataclasses
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np

FOCAL_LENGTH = 35.0  # mm, MOVi-E
SENSOR_WIDTH = 32.0  # mm, MOVi-E (horizontal sensor fit)
MAX_INSTANCES = 23  # MOVi-E keeps at most 23 instances (segment ids < 25 downstream)
TEXTURE_KINDS = ('checker', 'stripes', 'noise')
EVAL_SEEDS = range(0, 10_000)
TRAIN_SEED_OFFSET = 1_000_000
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class SceneConfig:
  """What `sample_scene` draws and `render_scene` renders. Ranges are (low, high), integers inclusive.

  Attributes:
    height: frame height in pixels.
    width: frame width in pixels.
    num_frames: frames per clip.
    num_static_objects: how many objects rest on the floor for the whole clip.
    num_dynamic_objects: how many objects move (slide, roll or tumble) with constant velocity and spin.
    object_size: largest side of an object's box in world units (MOVi-E: 0.75 .. 3).
    sphere_probability: chance that an object is a sphere rather than a box.
    spawn_half_width: objects start with x, y uniform in [-spawn_half_width, spawn_half_width].
    dynamic_speed: speed of dynamic objects in world units per frame.
    max_spin: largest spin of sliding boxes and tumbling objects, radians per frame.
    flying_probability: chance that a dynamic object tumbles through the air instead of moving on the floor.
    camera_radius: the camera path starts and ends at these distances from the origin (MOVi-E: 8 .. 12).
    max_camera_movement: camera path length is uniform in [0, this] (MOVi-E 4, panning MOVi-E 8).
    panning: True: the look-at point moves linearly (panning MOVi-E); False: fixed at the origin (MOVi-E).
    motion_frames: frames over which the camera covers its whole path (MOVi-E: 24). Clips of other lengths keep
      MOVi-E's per-frame camera speed; frame k sits at a = (k + 1) / (motion_frames + 2) of the path.
    texture_kinds: texture families to draw from (subset of TEXTURE_KINDS).
    dome_radius: radius of the background dome.
    ambient: range of the ambient light fraction (the rest is one directional light).
  """
  height: int = 256
  width: int = 256
  num_frames: int = 24
  num_static_objects: tuple[int, int] = (8, 14)
  num_dynamic_objects: tuple[int, int] = (1, 3)
  object_size: tuple[float, float] = (0.75, 3.0)
  sphere_probability: float = 0.35
  spawn_half_width: float = 6.0
  dynamic_speed: tuple[float, float] = (0.05, 0.25)
  max_spin: float = 0.15
  flying_probability: float = 0.3
  camera_radius: tuple[float, float] = (8.0, 12.0)
  max_camera_movement: float = 8.0
  panning: bool = True
  motion_frames: int = 24
  texture_kinds: tuple[str, ...] = TEXTURE_KINDS
  dome_radius: float = 40.0
  ambient: tuple[float, float] = (0.35, 0.55)

  def __post_init__(self):
    if self.height < 1 or self.width < 1 or self.num_frames < 1:
      raise ValueError(f'bad clip size {self.num_frames}x{self.height}x{self.width}')
    for name in ('num_static_objects', 'num_dynamic_objects'):
      lo, hi = getattr(self, name)
      if not 0 <= lo <= hi:
        raise ValueError(f'{name}={getattr(self, name)} is not a range of counts')
    if self.num_static_objects[1] + self.num_dynamic_objects[1] > MAX_INSTANCES:
      raise ValueError(f'at most {MAX_INSTANCES} objects per scene (MOVi-E segment ids)')
    unknown = set(self.texture_kinds) - set(TEXTURE_KINDS)
    if unknown or not self.texture_kinds:
      raise ValueError(f'texture_kinds must be a non-empty subset of {TEXTURE_KINDS}, got {self.texture_kinds}')
    if self.camera_radius[1] >= self.dome_radius:
      raise ValueError('the camera must stay inside the dome')


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


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """A rigid box or sphere moving with constant velocity and constant spin.

  Attributes:
    shape: 'box' or 'sphere'.
    half: [3] half sizes of the unscaled mesh box (a sphere: its unit sphere's box, ones).
    scale: uniform scale (a sphere: its radius).
    position: [3] world position at frame 0.
    velocity: [3] world units per frame.
    quaternion: [4] (w, x, y, z) rotation at frame 0.
    spin: [3] world-frame angular velocity, radians per frame (axis times rate).
    texture: texture evaluated at mesh coordinates, so it moves with the surface.
  """
  shape: str
  half: np.ndarray
  scale: float
  position: np.ndarray
  velocity: np.ndarray
  quaternion: np.ndarray
  spin: np.ndarray
  texture: Texture

  def pose(self, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions [t, 3] and quaternions [t, 4] (w, x, y, z) at frames 0 .. num_frames - 1, float32."""
    frames = np.arange(num_frames, dtype=np.float64)
    positions = self.position[None] + frames[:, None] * self.velocity[None]
    rate = np.linalg.norm(self.spin)
    axis = self.spin / rate if rate > 0 else np.array([0.0, 0.0, 1.0])
    half_angle = 0.5 * rate * frames
    turns = np.concatenate([np.cos(half_angle)[:, None], np.sin(half_angle)[:, None] * axis[None]], axis=1)
    quaternions = quaternion_multiply(turns, self.quaternion[None])
    return positions.astype(np.float32), quaternions.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CameraPath:
  """The linear MOVi-E camera path: frame k is at a = (k + 1) / (motion_frames + 2).

  Attributes:
    start: [3] `start` of §3.12; position = a * start + (1 - a) * end.
    end: [3].
    lookat_start: [3] look-at target = a * lookat_start + (1 - a) * lookat_end.
    lookat_end: [3].
    motion_frames: frames spanning the whole path (MOVi-E: 24).
  """
  start: np.ndarray
  end: np.ndarray
  lookat_start: np.ndarray
  lookat_end: np.ndarray
  motion_frames: int = 24

  def fractions(self, num_frames: int) -> np.ndarray:  # [t]
    return (np.arange(num_frames) + 1.0) / (self.motion_frames + 2.0)

  def positions(self, num_frames: int) -> np.ndarray:  # [t, 3] float64
    a = self.fractions(num_frames)[:, None]
    return a * self.start + (1 - a) * self.end

  def lookats(self, num_frames: int) -> np.ndarray:  # [t, 3] float64
    a = self.fractions(num_frames)[:, None]
    return a * self.lookat_start + (1 - a) * self.lookat_end


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything `render_scene` needs; `sample_scene` draws one, tests may build one by hand.

  Attributes:
    camera: the camera path.
    objects: the foreground objects (instance order before MOVi-E's relabelling).
    floor_texture: texture of the floor, in world coordinates.
    dome_texture: texture of the dome, in world coordinates.
    light_direction: [3] unit vector towards the directional light.
    ambient: ambient fraction of the lighting, in [0, 1].
  """
  camera: CameraPath
  objects: Sequence[SceneObject]
  floor_texture: Texture
  dome_texture: Texture
  light_direction: np.ndarray
  ambient: float


# ---------------------------------------------------------------------------------------------------------------
# Rotations and the camera.


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # [..., 4] x [..., 4] -> [..., 4]
  """Hamilton product a * b of (w, x, y, z) quaternions (apply b, then a)."""
  aw, ax, ay, az = np.moveaxis(a, -1, 0)
  bw, bx, by, bz = np.moveaxis(b, -1, 0)
  return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                   aw * bx + ax * bw + ay * bz - az * by,
                   aw * by - ax * bz + ay * bw + az * bx,
                   aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:  # [..., 4] (w, x, y, z) -> [..., 3, 3]
  """The standard rotation matrix of a unit quaternion (the formula Kubric's camera code uses)."""
  w, x, y, z = np.moveaxis(q, -1, 0)
  rows = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
          [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
          [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
  return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


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


def intrinsics(height: int, width: int) -> tuple[float, float]:
  """(fx, fy) in normalised image units, with MOVi's fy = fx * h / w (§3.3)."""
  fx = FOCAL_LENGTH / SENSOR_WIDTH
  return fx, fx * height / width


def camera_rays(height: int, width: int) -> np.ndarray:  # [h, w, 3] float32, unit length, camera frame
  """Unit ray of every pixel centre in camera coordinates (§3.3 unprojection)."""
  fx, fy = intrinsics(height, width)
  u = (np.arange(width) + 0.5) / width
  v = (np.arange(height) + 0.5) / height
  rays = np.stack(np.broadcast_arrays((u[None, :] - 0.5) / fx, (0.5 - v[:, None]) / fy, -1.0), axis=-1)
  return (rays / np.linalg.norm(rays, axis=-1, keepdims=True)).astype(np.float32)


def project(points: np.ndarray, position: np.ndarray, rotation: np.ndarray, height: int,
            width: int) -> tuple[np.ndarray, np.ndarray]:
  """Projects world points (§3.3). For small arrays: the pixel loops of the renderer do not use it.

  Args:
    points: [..., 3] world points.
    position: [..., 3] camera centres (broadcast against points).
    rotation: [..., 3, 3] camera-to-world rotations.
    height: image height in pixels.
    width: image width in pixels.

  Returns:
    Raster (x, y) [..., 2] ((0, 0) the top-left image corner) and the depth along the view axis [...] (> 0 in
    front of the camera).
  """
  fx, fy = intrinsics(height, width)
  cam = np.einsum('...i,...ij->...j', points - position, rotation)  # R^T (P - c)
  front = -cam[..., 2]
  with np.errstate(divide='ignore', invalid='ignore'):
    x = (0.5 + fx * cam[..., 0] / front) * width
    y = (0.5 - fy * cam[..., 1] / front) * height
  return np.stack([x, y], axis=-1), front


# ---------------------------------------------------------------------------------------------------------------
# Sampling a scene.


def _shell(rng: np.random.Generator, r_in: float, r_out: float, z_min: float) -> np.ndarray:  # [3]
  """Kubric's half-sphere-shell sampler (§3.12), driven by the scene RNG."""
  while True:
    g = rng.normal(size=3)
    if g[2] >= z_min:
      break
  radius = rng.uniform(r_in ** 3, r_out ** 3) ** (1 / 3)
  return g / np.linalg.norm(g) * radius


def _sample_camera(rng: np.random.Generator, config: SceneConfig) -> CameraPath:
  """The MOVi-E `linear_movement` path, with the panning look-at path when `config.panning` (§3.12)."""
  r_in, r_out = config.camera_radius
  speed = rng.uniform(0, config.max_camera_movement)
  for _ in range(1000):
    start = _shell(rng, r_in, r_out, 0.1)
    direction = rng.uniform(size=3) - 0.5
    end = start + speed * direction / np.linalg.norm(direction)
    if r_in <= np.linalg.norm(end) <= r_out and end[2] > 0.1:
      break
  else:  # pragma: no cover - an absurd config
    end = start
  if config.panning:
    through = _shell(rng, 0, 1, 0)
    lookat_start = _shell(rng, 0, 4, 0)
    while lookat_start[2] >= 1:
      lookat_start = _shell(rng, 0, 4, 0)
    lookat_end = through + rng.uniform(0, 0.5) * (through - lookat_start)
    if rng.uniform() < 0.5:
      lookat_start, lookat_end = lookat_end, lookat_start
  else:
    lookat_start = lookat_end = np.zeros(3)
  return CameraPath(start, end, lookat_start, lookat_end, config.motion_frames)


def _random_color(rng: np.random.Generator) -> np.ndarray:  # [3]
  return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.25, 1.0), rng.uniform(0.35, 1.0)))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:  # [3, 3]
  q = rng.normal(size=4)
  return quaternion_to_matrix(q / np.linalg.norm(q))


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
      rotation=_random_rotation(rng).astype(np.float32),
      waves=waves.astype(np.float32), phases=rng.uniform(0, 2 * np.pi, num_waves).astype(np.float32),
      detail_waves=detail_waves.astype(np.float32),
      detail_phases=rng.uniform(0, 2 * np.pi, num_detail).astype(np.float32),
      detail_amplitude=float(rng.uniform(0.1, 0.3)))


def _sample_shape(rng: np.random.Generator, config: SceneConfig) -> tuple[str, np.ndarray, float]:
  """(shape, half, scale) with the largest side of the box uniform in `config.object_size`."""
  side = rng.uniform(*config.object_size)
  if rng.uniform() < config.sphere_probability:
    return 'sphere', np.ones(3), side / 2
  half = rng.uniform(0.3, 1.0, size=3)
  half[rng.integers(3)] = 1.0
  return 'box', half, side / 2


def _yaw_quaternion(angle: float) -> np.ndarray:  # [4]
  return np.array([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)])


def _footprint_radius(half: np.ndarray, scale: float) -> float:
  return float(scale * np.linalg.norm(half[:2]))


def _place(rng: np.random.Generator, radius: float, placed: list[tuple[np.ndarray, float]],
           half_width: float) -> np.ndarray:  # [2]
  """A floor position whose footprint circle avoids those already placed (gives up after a few tries)."""
  for _ in range(30):
    xy = rng.uniform(-half_width, half_width, size=2)
    if all(np.linalg.norm(xy - other) > radius + r for other, r in placed):
      break
  placed.append((xy, radius))
  return xy


def _sample_static(rng: np.random.Generator, config: SceneConfig, placed: list, texture_frequency) -> SceneObject:
  shape, half, scale = _sample_shape(rng, config)
  xy = _place(rng, _footprint_radius(half, scale), placed, config.spawn_half_width)
  position = np.array([xy[0], xy[1], scale * half[2]])
  quaternion = _yaw_quaternion(rng.uniform(0, 2 * np.pi)) if shape == 'box' else _random_quaternion(rng)
  texture = sample_texture(rng, config.texture_kinds, texture_frequency)
  return SceneObject(shape, half, scale, position, np.zeros(3), quaternion, np.zeros(3), texture)


def _random_quaternion(rng: np.random.Generator) -> np.ndarray:  # [4]
  q = rng.normal(size=4)
  return q / np.linalg.norm(q)


def _sample_dynamic(rng: np.random.Generator, config: SceneConfig, placed: list, texture_frequency) -> SceneObject:
  """A sliding-and-spinning box, a rolling sphere, or (sometimes) a tumbling object in the air."""
  shape, half, scale = _sample_shape(rng, config)
  speed = rng.uniform(*config.dynamic_speed)
  heading = rng.uniform(0, 2 * np.pi)
  velocity = speed * np.array([np.cos(heading), np.sin(heading), 0.0])
  xy = _place(rng, _footprint_radius(half, scale), placed, config.spawn_half_width)
  texture = sample_texture(rng, config.texture_kinds, texture_frequency)
  if rng.uniform() < config.flying_probability:
    height = scale * np.linalg.norm(half) + rng.uniform(0.2, 3.0)
    velocity[2] = rng.uniform(-0.3, 0.3) * speed
    spin = rng.normal(size=3)
    spin *= rng.uniform(0.3, 1.0) * config.max_spin / np.linalg.norm(spin)
    return SceneObject(shape, half, scale, np.array([xy[0], xy[1], height]), velocity, _random_quaternion(rng),
                       spin, texture)
  if shape == 'sphere':  # rolling without slipping: v = spin x (r z)
    spin = np.cross([0.0, 0.0, 1.0], velocity) / scale
    return SceneObject(shape, half, scale, np.array([xy[0], xy[1], scale]), velocity, _random_quaternion(rng),
                       spin, texture)
  spin = np.array([0.0, 0.0, rng.uniform(-config.max_spin, config.max_spin)])
  return SceneObject(shape, half, scale, np.array([xy[0], xy[1], scale * half[2]]), velocity,
                     _yaw_quaternion(rng.uniform(0, 2 * np.pi)), spin, texture)


def sample_scene(seed: int, config: SceneConfig) -> Scene:
  """Draws a random scene; a pure function of (seed, config)."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A91]))
  camera = _sample_camera(rng, config)
  object_frequency = (0.8, 2.5)  # cells per mesh unit (meshes span [-1, 1])
  placed: list = []
  num_static = rng.integers(config.num_static_objects[0], config.num_static_objects[1] + 1)
  num_dynamic = rng.integers(config.num_dynamic_objects[0], config.num_dynamic_objects[1] + 1)
  objects = [_sample_static(rng, config, placed, object_frequency) for _ in range(num_static)]
  objects += [_sample_dynamic(rng, config, placed, object_frequency) for _ in range(num_dynamic)]
  floor_texture = sample_texture(rng, config.texture_kinds, (0.7, 2.0))
  dome_texture = sample_texture(rng, config.texture_kinds, (0.08, 0.3))
  elevation = rng.uniform(np.radians(30), np.radians(75))
  azimuth = rng.uniform(0, 2 * np.pi)
  light = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
  return Scene(camera, objects, floor_texture, dome_texture, light, float(rng.uniform(*config.ambient)))


# ---------------------------------------------------------------------------------------------------------------
# Ray casting. Arrays are channels-first ([3, n], [3, h, w]): numpy is slow at short trailing axes.


def _linear(m: np.ndarray, x: np.ndarray) -> np.ndarray:  # [k, 3] x [3, n] -> [k, n] (or [3] x [3, n] -> [n])
  """m @ x for a tiny m, without BLAS: its threads only burn the cores that training needs for such shapes."""
  m = np.asarray(m, np.float32)
  if m.ndim == 1:
    return m[0] * x[0] + m[1] * x[1] + m[2] * x[2]
  return m[:, 0:1] * x[0] + m[:, 1:2] * x[1] + m[:, 2:3] * x[2]


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
  b = _linear(origin, dirs)  # [n]
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
  b = _linear(offset, dirs)
  disc = b * b - np.float32(offset @ offset - radius * radius)
  t = -b - np.sqrt(np.maximum(disc, 0))
  t = np.where((disc >= 0) & (t > _EPS), t, np.float32(np.inf))
  normal = (offset[:, None] + np.where(np.isfinite(t), t, 0) * dirs) / np.float32(radius)
  return t, normal


def _screen_box(corners: np.ndarray, position: np.ndarray, rotation: np.ndarray, height: int, width: int):
  """Row and column slices [y0, y1) x [x0, x1) that contain the projection of world `corners` [8, 3], or None."""
  xy, front = project(corners, position, rotation, height, width)
  if np.any(front < 1e-3):  # a corner at or behind the camera plane: test the whole frame
    return slice(0, height), slice(0, width)
  x0 = max(int(np.floor(xy[:, 0].min())) - 1, 0)
  x1 = min(int(np.ceil(xy[:, 0].max())) + 1, width)
  y0 = max(int(np.floor(xy[:, 1].min())) - 1, 0)
  y1 = min(int(np.ceil(xy[:, 1].max())) + 1, height)
  if x0 >= x1 or y0 >= y1:
    return None
  return slice(y0, y1), slice(x0, x1)


def box_corners(half: np.ndarray) -> np.ndarray:  # [3] -> [8, 3] in MOVi-E corner order (x slowest, z fastest)
  signs = np.array([(sx, sy, sz) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
  return signs * half


def _cast_objects(buffers: _Buffers, origin: np.ndarray, rotation: np.ndarray, dirs: np.ndarray,
                  objects: Sequence[SceneObject], poses: Sequence['_Pose'], frame: int):
  """Ray-casts every object into one frame's buffers (rays `dirs` [3, h, w]); only pixels inside each object's
  screen box are tested."""
  _, height, width = dirs.shape
  for index, (obj, pose) in enumerate(zip(objects, poses)):
    window = _screen_box(pose.corners[frame], origin, rotation, height, width)
    if window is None:
      continue
    rows, cols = window
    block = dirs[:, rows, cols].reshape(3, -1)  # [3, n] world unit rays
    center, turn = pose.positions[frame], pose.rotations[frame]  # [3], [3, 3]
    if obj.shape == 'sphere':
      dist, normal = _intersect_sphere(origin, block, center, obj.scale)
      mesh = _linear(turn.T, normal)  # the mesh point of a unit sphere is its mesh-frame normal
    else:
      to_mesh = turn.T / np.float32(obj.scale)
      local_origin = (to_mesh @ (origin - center)).astype(np.float32)
      dist, mesh, local_normal = _intersect_box(local_origin, _linear(to_mesh, block), obj.half.astype(np.float32))
      normal = _linear(turn, local_normal)
    buffers.update(rows, cols, dist, 2 + index, normal, mesh)


# ---------------------------------------------------------------------------------------------------------------
# Shading.


def _band_limit(frequency: np.ndarray, footprint: np.ndarray) -> np.ndarray:
  """Attenuation of a pattern of `frequency` (cycles per unit) seen through a pixel `footprint` (units) wide."""
  return np.clip(1.5 - 1.5 * frequency * footprint, 0.0, 1.0)


def evaluate_texture(texture: Texture, points: np.ndarray, footprint: np.ndarray) -> np.ndarray:
  """RGB albedo [3, n] in [0, 1] at texture-space points [3, n].

  `footprint` [n] is the pixel size in the same units, used to fade the patterns that a pixel cannot resolve
  (cheap anti-aliasing).
  """
  q = _linear(texture.rotation * np.float32(texture.frequency), points)  # [3, n] in pattern cells
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
  return (np.sin(_linear(np.float32(2 * np.pi) * waves.T, q) + phases[:, None]) * amplitude).sum(0)


def _shade(scene: Scene, surface: np.ndarray, points: np.ndarray, mesh: np.ndarray, normal: np.ndarray,
           footprint: np.ndarray) -> np.ndarray:
  """Linear RGB [3, n] in [0, 1] of flat pixel lists: surface [n], world points [3, n], mesh coordinates [3, n],
  world normals [3, n], footprints [n] (pixel size on the surface, world units)."""
  rgb = np.empty_like(points)
  diffuse = np.maximum(_linear(scene.light_direction, normal), 0)  # [n]
  light = np.float32(scene.ambient) + np.float32(1 - scene.ambient) * diffuse
  textures = [scene.floor_texture, scene.dome_texture] + [o.texture for o in scene.objects]
  for index, texture in enumerate(textures):
    where = np.flatnonzero(surface == index)
    if not where.size:
      continue
    if index < 2:
      albedo = evaluate_texture(texture, points[:, where], footprint[where])
    else:
      scale = np.float32(scene.objects[index - 2].scale)
      albedo = evaluate_texture(texture, mesh[:, where], footprint[where] / scale)
    # The dome glows (Kubric's dome is lit by its own HDRI): no directional shading there.
    rgb[:, where] = albedo if index == 1 else albedo * light[where]
  return rgb


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
  rotations = quaternion_to_matrix(quaternions.astype(np.float64))  # [t, 3, 3]
  corners = positions[:, None] + obj.scale * box_corners(obj.half) @ np.swapaxes(rotations, 1, 2)
  return _Pose(positions, rotations.astype(np.float32), quaternions, corners.astype(np.float32))


def _camera_poses(camera: CameraPath, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Positions [t, 3] and quaternions [t, 4], float32, as stored in the example."""
  positions = camera.positions(num_frames)
  targets = camera.lookats(num_frames)
  quaternions = np.stack([look_at_quaternion(p, l) for p, l in zip(positions, targets)])
  return positions.astype(np.float32), quaternions.astype(np.float32)


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
  cam_rotations = quaternion_to_matrix(cam_quaternions.astype(np.float64)).astype(np.float32)  # [t, 3, 3]
  rays = camera_rays(h, w).reshape(-1, 3).T  # [3, h * w] camera frame
  poses = [_object_pose(obj, t) for obj in scene.objects]

  dist = np.empty((t, h, w), np.float32)
  surface = np.empty((t, h, w), np.int16)
  normal = np.empty((3, t, h, w), np.float32)
  mesh = np.empty((3, t, h, w), np.float32)
  dirs = np.empty((3, t, h, w), np.float32)
  for f in range(t):
    origin = cam_positions[f].astype(np.float64)
    frame_dirs = _linear(cam_rotations[f], rays)  # [3, h * w] world
    bg_dist, is_floor, bg_normal = _background(origin, frame_dirs, config.dome_radius)
    buffers = _Buffers(bg_dist.reshape(h, w), np.where(is_floor, 0, 1).astype(np.int16).reshape(h, w),
                       bg_normal.reshape(3, h, w))
    frame_dirs = frame_dirs.reshape(3, h, w)
    _cast_objects(buffers, origin, cam_rotations[f], frame_dirs, scene.objects, poses, f)
    dist[f], surface[f], normal[:, f], mesh[:, f], dirs[:, f] = (buffers.dist, buffers.surface, buffers.normal,
                                                                 buffers.mesh, frame_dirs)

  flat_dirs, flat_normal, flat_dist = dirs.reshape(3, -1), normal.reshape(3, -1), dist.reshape(-1)
  points = cam_positions.T.repeat(h * w, axis=1) + flat_dist * flat_dirs  # [3, t * h * w] world
  cosine = np.abs(flat_normal[0] * flat_dirs[0] + flat_normal[1] * flat_dirs[1] + flat_normal[2] * flat_dirs[2])
  footprint = flat_dist * np.float32(SENSOR_WIDTH / FOCAL_LENGTH / w) / np.maximum(cosine, 0.2)
  rgb = _shade(scene, surface.reshape(-1), points, mesh.reshape(3, -1), flat_normal, footprint)

  kept, segmentation = _relabel(surface, len(scene.objects))
  is_object = surface >= 2
  halves = np.stack([np.float32(o.half) for o in scene.objects] + [np.ones(3, np.float32)])  # [objects + 1, 3]
  object_half = halves[np.where(is_object, surface - 2, -1)]  # [t, h, w, 3]
  unit = np.moveaxis(mesh, 0, -1) / (2 * object_half) + np.float32(0.5)
  depth_range = np.array([dist.min(), dist.max()], np.float32)
  span = max(depth_range[1] - depth_range[0], np.float32(1e-6))

  example = {
      'video': _channels_last(np.round(rgb.reshape(3, t, h, w) * 255).astype(np.uint8)),
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


def evaluation_scenes(num_videos: int, config: SceneConfig = SceneConfig()) -> Iterator[dict[str, np.ndarray]]:
  """The fixed held-out set: scenes of EVAL_SEEDS[0 .. num_videos - 1]."""
  if not 0 <= num_videos <= len(EVAL_SEEDS):
    raise ValueError(f'num_videos must be in [0, {len(EVAL_SEEDS)}], got {num_videos}')
  for seed in EVAL_SEEDS[:num_videos]:
    yield generate_scene(seed, config)


def training_scenes(config: SceneConfig = SceneConfig(), start: int = 0, step: int = 1,
                    limit: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
  """Training scenes of seeds TRAIN_SEED_OFFSET + start, + start + step, ... (disjoint from EVAL_SEEDS).

  Give each data worker or host its own `start` (its index) and `step` (the worker count) to shard the stream.
  """
  index = start
  while limit is None or (index - start) // step < limit:
    yield generate_scene(TRAIN_SEED_OFFSET + index, config)
    index += step
