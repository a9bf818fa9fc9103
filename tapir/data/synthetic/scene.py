"""The procedural scenes' description (config, objects, camera path) and their seeded random draw.

A scene is a textured floor (the plane z = 0) inside a textured dome (a sphere of radius `dome_radius` about the
origin), both background (segment 0), plus textured boxes and spheres: static ones resting on the floor, dynamic
ones sliding, rolling or tumbling along straight lines with constant velocity and spin, thrown on ballistic paths
that bounce off the floor, or crossing the view (entering or leaving the frame). A camera follows the (panning)
MOVi-E trajectory of training_and_data.md §3.12. Rotations and camera formulas: `tapir.data.geometry`.

Surfaces carry solid procedural textures (`textures`) or, with probability `photo_share` each, crops of real
photographs (`photo_textures`, `tapir.data.photographs`); `SceneConfig.cards` can turn moving objects into
photographed cards floating in front of the scene (`cards`, off by default). Scene kinds (`SCENE_KINDS`,
`SceneConfig.of_kind`): 'photographic' (the default: photographs, cast shadows, motion variety and camera
effects) and 'procedural' (the scenes before those existed: procedural textures, no shadows, linear motion, a
perfect camera; bit-identical to them). Every addition draws from its own random stream, so the procedural
draw is the same in both kinds.

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

Seeds: `generate_scene(seed)` is a pure function of (seed, config). Evaluation uses `EVAL_SEEDS` (0 .. 9999);
training uses seeds from `TRAIN_SEED_OFFSET` (10**6) upwards, so the two never overlap.
"""

import dataclasses
from typing import Sequence

import numpy as np

from tapir.data import geometry
from tapir.data import photographs
from tapir.data.synthetic import camera_effects
from tapir.data.synthetic import cards as cards_lib
from tapir.data.synthetic import motion
from tapir.data.synthetic.photo_textures import PhotoTexture, sample_photo_texture
from tapir.data.synthetic.textures import TEXTURE_KINDS, Texture, sample_texture

FOCAL_LENGTH = 35.0  # mm, MOVi-E
SENSOR_WIDTH = 32.0  # mm, MOVi-E (horizontal sensor fit)
MAX_INSTANCES = 23  # MOVi-E keeps at most 23 instances (segment ids < 25 downstream)
EVAL_SEEDS = range(0, 10_000)
TRAIN_SEED_OFFSET = 1_000_000


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
    photo_share: chance that a surface (floor, dome, each object) shows a photograph instead of a procedural
      texture.
    photographs: the photographs to draw from (`tapir.data.photographs` names).
    shadows: the directional light casts shadows of the objects (else only Lambertian shading).
    ballistic_probability: chance that a dynamic object is thrown: it falls under `gravity` and bounces.
    crossing_probability: chance that a dynamic object crosses the view fast, entering or leaving the frame.
    gravity: world units per frame^2 (Kubric's 9.81 m/s^2 at 24 fps).
    restitution: range of the bounce's velocity ratio.
    camera: the lens and sensor effects (motion blur, defocus, noise, compression, exposure); pixels only.
    cards: photographed cards flying in front of the scene (`cards.Cards`; off by default).
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
  photo_share: float = 0.75
  photographs: tuple[str, ...] = photographs.TRAIN_PHOTOGRAPHS
  shadows: bool = True
  ballistic_probability: float = 0.3
  crossing_probability: float = 0.3
  gravity: float = 9.81 / 24 ** 2
  restitution: tuple[float, float] = (0.3, 0.7)
  camera: camera_effects.CameraEffects = camera_effects.REALISTIC
  cards: cards_lib.Cards = cards_lib.Cards()

  @classmethod
  def of_kind(cls, kind: str, **kwargs) -> 'SceneConfig':
    """The settings of scene kind `kind` (see SCENE_KINDS), with `kwargs` on top."""
    if kind not in SCENE_KINDS:
      raise ValueError(f'scene kind must be one of {tuple(SCENE_KINDS)}, got {kind!r}')
    return cls(**{**SCENE_KINDS[kind], **kwargs})

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
    for name in ('photo_share', 'ballistic_probability', 'crossing_probability'):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f'{name} must be a probability in [0, 1], got {getattr(self, name)}')
    photographs.check_names(self.photographs, 'photographs')
    if not self.gravity >= 0:
      raise ValueError(f'gravity must be >= 0 (world units per frame^2), got {self.gravity}')
    if not 0 <= self.restitution[0] <= self.restitution[1] <= 1:
      raise ValueError(f'restitution must be a range (low, high) within [0, 1], got {self.restitution}')
    if not isinstance(self.camera, camera_effects.CameraEffects):
      raise ValueError(f'camera must be a camera_effects.CameraEffects, got {type(self.camera).__name__}')
    if not isinstance(self.cards, cards_lib.Cards):
      raise ValueError(f'cards must be a cards.Cards, got {type(self.cards).__name__}')


SCENE_KINDS = {
    'photographic': {},  # SceneConfig's defaults
    'procedural': dict(photo_share=0.0, shadows=False, ballistic_probability=0.0, crossing_probability=0.0,
                       camera=camera_effects.CameraEffects()),
}


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
    gravity: > 0: a ballistic path: the height falls with this acceleration (world units per frame^2) and
      bounces off the floor where the centre is at `rest_height`, keeping `restitution` of its speed.
    rest_height: the centre's height at floor contact (ballistic paths).
    restitution: the bounce's velocity ratio (ballistic paths).
  """
  shape: str
  half: np.ndarray
  scale: float
  position: np.ndarray
  velocity: np.ndarray
  quaternion: np.ndarray
  spin: np.ndarray
  texture: Texture | PhotoTexture
  gravity: float = 0.0
  rest_height: float = 0.0
  restitution: float = 0.0

  def pose(self, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions [t, 3] and quaternions [t, 4] (w, x, y, z) at frames 0 .. num_frames - 1, float32."""
    frames = np.arange(num_frames, dtype=np.float64)
    positions = self.position[None] + frames[:, None] * self.velocity[None]
    if self.gravity > 0:
      positions[:, 2] = motion.bounce_heights(self.position[2], self.velocity[2], self.gravity, self.rest_height,
                                              self.restitution, frames)
    rate = np.linalg.norm(self.spin)
    axis = self.spin / rate if rate > 0 else np.array([0.0, 0.0, 1.0])
    half_angle = 0.5 * rate * frames
    turns = np.concatenate([np.cos(half_angle)[:, None], np.sin(half_angle)[:, None] * axis[None]], axis=1)
    quaternions = geometry.quaternion_multiply(turns, self.quaternion[None])
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

  def quaternions(self, num_frames: int) -> np.ndarray:  # [t, 4] float64 camera-to-world (w, x, y, z)
    return np.stack([geometry.look_at_quaternion(p, l)
                     for p, l in zip(self.positions(num_frames), self.lookats(num_frames))])


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
    effects: the clip's drawn camera effects (None: a perfect camera).
    effects_seed: seeds the effects' per-pixel noise.
  """
  camera: CameraPath
  objects: Sequence[SceneObject]
  floor_texture: Texture | PhotoTexture
  dome_texture: Texture | PhotoTexture
  light_direction: np.ndarray
  ambient: float
  effects: camera_effects.EffectDraw | None = None
  effects_seed: int = 0


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
  quaternion = _yaw_quaternion(rng.uniform(0, 2 * np.pi)) if shape == 'box' else geometry.random_quaternion(rng)
  texture = sample_texture(rng, config.texture_kinds, texture_frequency)
  return SceneObject(shape, half, scale, position, np.zeros(3), quaternion, np.zeros(3), texture)


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
    return SceneObject(shape, half, scale, np.array([xy[0], xy[1], height]), velocity, geometry.random_quaternion(rng),
                       spin, texture)
  if shape == 'sphere':  # rolling without slipping: v = spin x (r z)
    spin = np.cross([0.0, 0.0, 1.0], velocity) / scale
    return SceneObject(shape, half, scale, np.array([xy[0], xy[1], scale]), velocity, geometry.random_quaternion(rng),
                       spin, texture)
  spin = np.array([0.0, 0.0, rng.uniform(-config.max_spin, config.max_spin)])
  return SceneObject(shape, half, scale, np.array([xy[0], xy[1], scale * half[2]]), velocity,
                     _yaw_quaternion(rng.uniform(0, 2 * np.pi)), spin, texture)


def _photo_surface(extra: np.random.Generator, config: SceneConfig, texture, mapping: str, size):
  """`texture`, or with probability `photo_share` a photograph placed by `extra` (the additions' stream)."""
  if extra.uniform() >= config.photo_share:
    return texture
  return sample_photo_texture(extra, config.photographs, mapping, size)


def sample_scene(seed: int, config: SceneConfig) -> Scene:
  """Draws a random scene; a pure function of (seed, config)."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A91]))
  extra = np.random.default_rng(np.random.SeedSequence([seed, 0x50A0]))  # photographs, motion, camera effects
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
  ambient = float(rng.uniform(*config.ambient))

  lookat = camera.lookats(config.num_frames)[config.num_frames // 2]
  objects = [obj if i < num_static else motion.vary_motion(extra, config, obj, lookat, config.num_frames)
             for i, obj in enumerate(objects)]
  objects = [dataclasses.replace(obj, texture=_photo_surface(
      extra, config, obj.texture, 'spherical' if obj.shape == 'sphere' else 'planar',
      (1, 3) if obj.shape == 'sphere' else (1.0, 6.0))) for obj in objects]
  floor_texture = _photo_surface(extra, config, floor_texture, 'planar', (3.0, 15.0))
  dome_texture = _photo_surface(extra, config, dome_texture, 'spherical', (3, 8))
  effects = camera_effects.sample_effects(extra, config.camera)
  objects = cards_lib.make_cards(  # their own stream: without cards the draw above is unchanged
      np.random.default_rng(np.random.SeedSequence([seed, 0xCA4D])), config.cards, objects, num_static, camera,
      config.num_frames, config.photographs, SENSOR_WIDTH / FOCAL_LENGTH)
  return Scene(camera, objects, floor_texture, dome_texture, light, ambient, effects,
               int(extra.integers(2 ** 31)))
