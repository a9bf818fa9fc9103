"""Photographed cards: thin flat boxes carrying a photograph, flying between the camera and the scene.

Real video is full of flat, independently moving occluders (a hand with a phone, a passing sign, a sheet of
paper) that cover a large part of the view and reveal what is behind them. The built-in scenes' objects rest on
or tumble above the floor in the middle distance; a card instead floats in front of them, facing the camera, and
drifts across the view, so that its points move on their own over a background that moves with the camera, and
it hides and reveals the background as it goes. A card is an ordinary `scene.SceneObject` box (half sizes
(1, aspect, thickness)), so the renderer, the shading, the camera effects and the ground truth treat it exactly as
any other object.

`Cards` holds the knobs (`scene.SceneConfig.cards`); `make_cards` turns some dynamic objects of a drawn scene into
cards, drawing from its own random stream, so that with `probability` 0 (the default) a scene is unchanged bit
for bit. Sizes and speeds are given in the image: a card spans `view_fraction` of the frame width at its distance
and drifts `image_speed` frame widths per frame, whatever its depth.
"""

import dataclasses
import math
from typing import Sequence

import numpy as np

from tapir.data import geometry
from tapir.data.synthetic.camera_effects import check_range
from tapir.data.synthetic.camera_effects import is_real
from tapir.data.synthetic.photo_textures import sample_photo_texture

_THICKNESS = 0.02  # half thickness of a card relative to its half length
_MIN_DEPTH = 0.3  # every corner stays at least this far in front of the camera plane (world units)
_TRIES = 20


@dataclasses.dataclass(frozen=True)
class Cards:
  """What `make_cards` draws. Ranges are (low, high), drawn uniformly.

  Attributes:
    probability: chance that a dynamic object is replaced by a card (0: no cards, the scene is unchanged).
    view_fraction: a card's long side as a fraction of the frame width at the card's distance.
    depth: the card's distance from the camera, as a fraction of the distance to the look-at target (mid-clip).
    image_speed: drift across the view in frame widths per frame (at the card's distance).
    max_tilt: largest tilt of the card away from facing the camera, degrees.
    max_spin: largest spin, radians per frame.
    extent: the surface extent (card half lengths) that the photograph's width covers, drawn log-uniformly.
  """
  probability: float = 0.0
  view_fraction: tuple[float, float] = (0.2, 0.5)
  depth: tuple[float, float] = (0.3, 0.8)
  image_speed: tuple[float, float] = (0.005, 0.04)
  max_tilt: float = 30.0
  max_spin: float = 0.05
  extent: tuple[float, float] = (2.0, 5.0)

  def __post_init__(self):
    if not is_real(self.probability) or not 0 <= self.probability <= 1:
      raise ValueError(f'cards.probability must be a probability in [0, 1], got {self.probability!r}')
    for name, low, high in (('view_fraction', 1e-3, 2.0), ('depth', 0.05, 1.0), ('image_speed', 0.0, 0.5),
                            ('extent', 0.1, 100.0)):
      check_range(f'cards.{name}', getattr(self, name), low, high)
    for name, high in (('max_tilt', 80.0), ('max_spin', 1.0)):
      value = getattr(self, name)
      if not is_real(value) or not 0 <= value <= high:
        raise ValueError(f'cards.{name} must be a number in [0, {high}], got {value!r}')


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:  # [3], scalar -> [3, 3]
  """The rotation by `angle` radians about `axis` (any length), through its quaternion."""
  axis = axis / np.linalg.norm(axis)
  return geometry.quaternion_to_matrix(np.append(math.cos(angle / 2), math.sin(angle / 2) * axis))


def _in_view(card, cameras: np.ndarray, rotations: np.ndarray, num_frames: int) -> bool:
  """True if every corner of `card` stays in front of the camera plane and above the floor at every frame."""
  positions, quaternions = card.pose(num_frames)
  corners = card.scale * geometry.box_corners(card.half)  # [8, 3]
  world = positions[:, None] + np.einsum('tij,kj->tki', geometry.quaternion_to_matrix(quaternions), corners)
  local = np.einsum('tji,tkj->tki', rotations, world - cameras[:, None])  # camera frame, looking along -Z
  return bool(np.all(-local[..., 2] >= _MIN_DEPTH) and np.all(world[..., 2] > 0.01))


def make_card(rng: np.random.Generator, knobs: Cards, obj, cameras: np.ndarray, rotations: np.ndarray,
              lookats: np.ndarray, photographs: Sequence[str], frame_width: float):
  """`obj` (a dynamic `scene.SceneObject`) turned into a card drawn from `rng`, or None if none fits in front
  of the camera after a few tries.

  Args:
    rng: the cards' random stream.
    knobs: the `Cards` settings.
    obj: the object the card replaces (its fields are all redrawn; passing it keeps this module below `scene`).
    cameras: [t, 3] camera positions; rotations: [t, 3, 3] their camera-to-world rotations; lookats: [t, 3]
      look-at targets (the clip's frames).
    photographs: the photographs to draw the card's face from (`tapir.data.photographs` names).
    frame_width: the frame's width in world units at unit distance (sensor width / focal length).
  """
  num_frames = len(cameras)
  mid = num_frames // 2
  right, up, back = rotations[mid].T
  distance = float(np.linalg.norm(lookats[mid] - cameras[mid]))
  texture = sample_photo_texture(rng, photographs, 'planar', knobs.extent)
  for _ in range(_TRIES):
    depth = rng.uniform(*knobs.depth) * distance
    width = depth * frame_width  # world width of the frame at the card's distance
    scale = 0.5 * rng.uniform(*knobs.view_fraction) * width
    half = np.array([1.0, rng.uniform(0.5, 1.0), _THICKNESS])
    offset = rng.uniform(-0.3, 0.3, size=2) * width
    centre = cameras[mid] - depth * back + offset[0] * right + offset[1] * up
    heading = rng.uniform(0, 2 * np.pi)
    velocity = rng.uniform(*knobs.image_speed) * width * (math.cos(heading) * right + math.sin(heading) * up)
    # Facing the camera (the card's thin axis along `back`), turned in its plane, then tilted.
    facing = np.stack([right, up, back], axis=1) @ _rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(0, 2 * np.pi))
    tilt_heading = rng.uniform(0, 2 * np.pi)
    tilt_axis = math.cos(tilt_heading) * right + math.sin(tilt_heading) * up
    matrix = _rotation(tilt_axis, math.radians(rng.uniform(-knobs.max_tilt, knobs.max_tilt))) @ facing
    spin = rng.normal(size=3)
    spin *= rng.uniform(0, knobs.max_spin) / np.linalg.norm(spin)
    card = dataclasses.replace(
        obj, shape='box', half=half, scale=float(scale), position=centre - mid * velocity, velocity=velocity,
        quaternion=geometry.matrix_to_quaternion(matrix), spin=spin, texture=texture, gravity=0.0,
        rest_height=0.0, restitution=0.0)
    if _in_view(card, cameras, rotations, num_frames):
      return card
  return None


def make_cards(rng: np.random.Generator, knobs: Cards, objects: list, first_dynamic: int, camera, num_frames: int,
               photographs: Sequence[str], frame_width: float) -> list:
  """`objects` with each dynamic one (index >= first_dynamic) replaced, with probability `knobs.probability`, by
  a card (`make_card`, the other arguments as there); `camera` is the clip's `scene.CameraPath`, over
  `num_frames` frames. With probability 0 nothing is drawn and `objects` come back as they are."""
  if knobs.probability == 0:
    return objects
  cameras, lookats = camera.positions(num_frames), camera.lookats(num_frames)
  rotations = geometry.quaternion_to_matrix(camera.quaternions(num_frames))  # [t, 3, 3], once a scene
  out = list(objects)
  for i in range(first_dynamic, len(out)):
    if rng.uniform() < knobs.probability:
      card = make_card(rng, knobs, out[i], cameras, rotations, lookats, photographs, frame_width)
      out[i] = card if card is not None else out[i]
  return out
