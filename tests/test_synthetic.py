"""Tests of the procedural MOVi-E-format scenes (`tapir.data.synthetic`).

The geometry checks re-derive everything from the emitted MOVi-E fields with the formulas of
training_and_data.md §3.3 / §3.6 written out here, independently of the generator's own helpers.
"""

import dataclasses

import numpy as np
import pytest

from tapir.data import geometry
from tapir.data import synthetic

TINY = synthetic.SceneConfig(height=64, width=64, num_frames=6, num_static_objects=(4, 6),
                             num_dynamic_objects=(1, 2))
# A cube's corners (±0.5) in MOVi-E corner order, homogeneous: the left side of the §3.6 least-squares fit.
UNIT_CORNERS = np.array([(x, y, z, 1.0) for x in (-.5, .5) for y in (-.5, .5) for z in (-.5, .5)])


@pytest.fixture(scope='module')
def tiny_scene():
  return synthetic.generate_scene(1_000_121, TINY)


# ----------------------------------------------------------------------------------------------------------------
# Decoding and camera formulas (§3.2, §3.3), written independently of the generator.


def _rotation(q):  # [..., 4] (w, x, y, z) -> [..., 3, 3]
  w, x, y, z = np.moveaxis(np.asarray(q, np.float64), -1, 0)
  return np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                   np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                   np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def _focal(example):
  h, w = example['video'].shape[1:3]
  fx = float(example['camera/focal_length'] / example['camera/sensor_width'])
  return fx, fx * h / w


def _depth(example):  # [t, h, w] scene units
  lo, hi = example['metadata/depth_range']
  return lo + example['depth'][..., 0].astype(np.float32) * (hi - lo) / 65535


def _depth_step(example):
  lo, hi = example['metadata/depth_range']
  return float(hi - lo) / 65535


def _unproject(example, frame, rows, cols, depth=None):  # -> [n, 3] world points through the pixel centres
  h, w = example['video'].shape[1:3]
  fx, fy = _focal(example)
  u, v = (cols + 0.5) / w, (rows + 0.5) / h
  r = np.stack([(u - 0.5) / fx, (0.5 - v) / fy, -np.ones_like(u)], -1)
  r /= np.linalg.norm(r, axis=-1, keepdims=True)
  d = _depth(example)[frame, rows, cols] if depth is None else depth
  rot = _rotation(example['camera/quaternions'][frame])
  return example['camera/positions'][frame] + (d[:, None] * r) @ rot.T


def _project(example, frame, points):  # [n, 3] -> raster (x, y) [n, 2], front [n]
  h, w = example['video'].shape[1:3]
  fx, fy = _focal(example)
  rot = _rotation(example['camera/quaternions'][frame])
  cam = (points - example['camera/positions'][frame]) @ rot
  u = 0.5 + fx * cam[:, 0] / -cam[:, 2]
  v = 0.5 - fy * cam[:, 1] / -cam[:, 2]
  return np.stack([u * w, v * h], -1), -cam[:, 2]


def _box_world(example, instance, frame, coords):  # decoded object coordinates [n, 3] -> world [n, 3] (§3.6)
  corners = np.concatenate([example['instances/bboxes_3d'][instance, frame], np.ones((8, 1))], -1)
  fit = np.linalg.lstsq(UNIT_CORNERS, corners, rcond=None)[0]  # [4, 4]
  world = np.concatenate([coords, np.ones((len(coords), 1))], -1) @ fit
  return world[:, :3] / world[:, 3:]


def _label_of(example, position):
  """Segment label of the instance whose frame-0 position is `position`."""
  return 1 + int(np.argmin(np.linalg.norm(example['instances/positions'][:, 0] - position, axis=-1)))


# ----------------------------------------------------------------------------------------------------------------
# Hand-built scenes.


def _texture(seed):
  return synthetic.sample_texture(np.random.default_rng(seed), synthetic.TEXTURE_KINDS, (1.0, 2.0))


def _object(shape, position, scale, seed):
  half = np.ones(3)
  return synthetic.SceneObject(shape, half, scale, np.asarray(position, np.float64), np.zeros(3),
                               np.array([1.0, 0, 0, 0]), np.zeros(3), _texture(seed))


def _scene(camera, objects):
  light = np.array([0.3, -0.4, 0.866])
  return synthetic.Scene(camera, objects, _texture(100), _texture(101), light / np.linalg.norm(light), 0.5)


def _camera(position, lookat_start, lookat_end, frames):
  position = np.asarray(position, np.float64)
  return synthetic.CameraPath(position, position, np.asarray(lookat_start, np.float64),
                              np.asarray(lookat_end, np.float64), motion_frames=frames)


# ----------------------------------------------------------------------------------------------------------------
# Determinism, seeds and encodings.


def test_same_seed_same_arrays_different_seed_differs(tiny_scene):
  again = synthetic.generate_scene(1_000_121, TINY)
  assert again.keys() == tiny_scene.keys()
  for key in tiny_scene:
    np.testing.assert_array_equal(again[key], tiny_scene[key], err_msg=key)
  other = synthetic.generate_scene(1_000_122, TINY)
  assert not np.array_equal(other['video'], tiny_scene['video'])


def test_evaluation_split_is_fixed_and_disjoint_from_training():
  assert synthetic.EVAL_SEEDS == range(0, 10_000)
  assert max(synthetic.EVAL_SEEDS) < synthetic.TRAIN_SEED_OFFSET
  evaluation = synthetic.generate_scene(synthetic.EVAL_SEEDS[0], TINY)
  train = synthetic.generate_scene(synthetic.TRAIN_SEED_OFFSET, TINY)
  assert not np.array_equal(evaluation['video'], train['video'])


def test_fields_have_the_movi_e_keys_dtypes_and_shapes(tiny_scene, golden_dir):
  fixture = np.load(golden_dir / 'kubric_tracks_tiny.npz')
  reference = {k[len('input/'):]: fixture[k] for k in fixture.files if k.startswith('input/')}
  assert set(tiny_scene) == set(reference)
  for key, value in reference.items():
    assert tiny_scene[key].dtype == value.dtype, key
    assert tiny_scene[key].ndim == value.ndim, key
  t, h, w = TINY.num_frames, TINY.height, TINY.width
  k = int(tiny_scene['metadata/num_instances'])
  assert tiny_scene['video'].shape == (t, h, w, 3)
  for key, channels in (('segmentations', 1), ('depth', 1), ('normal', 3), ('object_coordinates', 3)):
    assert tiny_scene[key].shape == (t, h, w, channels), key
  assert tiny_scene['camera/positions'].shape == (t, 3) and tiny_scene['camera/quaternions'].shape == (t, 4)
  assert tiny_scene['instances/bboxes_3d'].shape == (k, t, 8, 3)
  assert tiny_scene['instances/positions'].shape == (k, t, 3)
  assert tiny_scene['instances/quaternions'].shape == (k, t, 4)
  assert tiny_scene['instances/scale'].shape == (k,)
  assert (int(tiny_scene['metadata/num_frames']), int(tiny_scene['metadata/height']),
          int(tiny_scene['metadata/width'])) == (t, h, w)
  for key in ('camera/focal_length', 'camera/sensor_width', 'camera/field_of_view'):
    np.testing.assert_allclose(tiny_scene[key], reference[key], rtol=1e-6, err_msg=key)


def test_segmentation_is_relabelled_like_movi_e(tiny_scene):
  seg = tiny_scene['segmentations'][..., 0]
  k = int(tiny_scene['metadata/num_instances'])
  counts = np.bincount(seg.reshape(-1), minlength=k + 1)
  assert len(counts) == k + 1 and k >= 1
  assert np.all(counts[1:] > 0), 'never-visible instances must be dropped'
  assert np.all(np.diff(counts[1:]) <= 0), 'instances sorted by visible pixels, descending'


def test_encodings(tiny_scene):
  seg = tiny_scene['segmentations'][..., 0]
  assert np.all(tiny_scene['object_coordinates'][seg == 0] == 0)
  depth = tiny_scene['depth']
  assert depth.min() == 0 and depth.max() == 65535
  lo, hi = tiny_scene['metadata/depth_range']
  assert 0 < lo < hi
  normal = tiny_scene['normal'].astype(np.float32) / 65535 * 2 - 1
  np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1.0, atol=1e-3)
  rows, cols = np.nonzero(seg[0] == 0)
  floor = np.abs(_unproject(tiny_scene, 0, rows, cols)[:, 2]) < 1e-2  # background points on z = 0 face +Z
  assert floor.sum() > 100
  np.testing.assert_allclose(normal[0, rows[floor], cols[floor]] - [0, 0, 1], 0, atol=1e-4)
  q = np.linalg.norm(tiny_scene['instances/quaternions'], axis=-1)
  np.testing.assert_allclose(q, 1.0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Geometry.


@pytest.mark.parametrize('size', [(64, 64), (48, 64)])
def test_object_coordinates_map_to_the_pixel_ray_at_the_decoded_depth(tiny_scene, size):
  if size != (TINY.height, TINY.width):
    tiny_scene = synthetic.generate_scene(1_000_121, dataclasses.replace(TINY, height=size[0], width=size[1]))
  seg = tiny_scene['segmentations'][..., 0]
  normal = tiny_scene['normal'].astype(np.float64) / 65535 * 2 - 1
  coords = tiny_scene['object_coordinates'].astype(np.float64) / 65535 - 0.5
  tolerance = 1.01 * _depth_step(tiny_scene) + 2e-4
  checked = 0
  for frame in range(TINY.num_frames):
    for label in np.unique(seg[frame]):
      if label == 0:
        continue
      rows, cols = np.nonzero(seg[frame] == label)
      from_depth = _unproject(tiny_scene, frame, rows, cols)
      from_box = _box_world(tiny_scene, label - 1, frame, coords[frame, rows, cols])
      np.testing.assert_array_less(np.linalg.norm(from_depth - from_box, axis=-1), tolerance)
      # ... and projecting that point returns the pixel centre.
      xy, front = _project(tiny_scene, frame, from_box)
      assert np.all(front > 0)
      np.testing.assert_allclose(xy, np.stack([cols + 0.5, rows + 0.5], -1), atol=0.02)
      # Visible surfaces face the camera (the back-facing rule of §3.7 must not fire at the query frame).
      view = from_box - tiny_scene['camera/positions'][frame]
      assert np.all(np.sum(normal[frame, rows, cols] * view, axis=-1) < 0)
      checked += len(rows)
  assert checked > 100


def _static_labels(example):
  positions, quaternions = example['instances/positions'], example['instances/quaternions']
  static = np.all(positions == positions[:, :1], axis=(1, 2)) & np.all(quaternions == quaternions[:, :1], axis=(1, 2))
  return [i + 1 for i in np.flatnonzero(static)]


def _round_trip(example, rows, cols, world, to_world):
  """Projects world points [n, 3] of frame-0 pixels into the last frame, reads the surface point at the nearest
  pixel there with `to_world(frame, i, j)`, and projects it back into frame 0.

  Returns the error [m] in frame-0 pixels of the points still visible (same segment, consistent depth) and the
  visible fraction of those that stayed inside the image (NaN if none did).
  """
  last = len(example['video']) - 1
  seg = example['segmentations'][..., 0]
  xy, _ = _project(example, last, world)
  j, i = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
  h, w = seg.shape[1:]
  inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
  rows, cols, world, i, j = rows[inside], cols[inside], world[inside], i[inside], j[inside]
  distance = np.linalg.norm(world - example['camera/positions'][last], axis=-1)
  visible = ((seg[last, i, j] == seg[0, rows, cols])
             & (np.abs(_depth(example)[last, i, j] - distance) < 0.02 * distance))
  back, _ = _project(example, 0, to_world(last, i[visible], j[visible]))
  error = np.linalg.norm(back - np.stack([cols[visible] + 0.5, rows[visible] + 0.5], -1), axis=-1)
  return error, visible.mean() if len(visible) else np.nan


def test_static_points_keep_their_world_position(tiny_scene):
  """A static-object or background pixel of frame 0, found in the last frame and read back there, is the same point
  (nearest-pixel rounding alone moves it by up to 0.71 px; the camera moves by more than a unit in this scene)."""
  seg = tiny_scene['segmentations'][..., 0]
  coords = tiny_scene['object_coordinates'].astype(np.float64) / 65535 - 0.5
  checked = 0
  for label in _static_labels(tiny_scene):  # objects: surface points from object coordinates, not camera or depth
    rows, cols = np.nonzero(seg[0] == label)
    from_coords = lambda frame, i, j, label=label: _box_world(tiny_scene, label - 1, frame, coords[frame, i, j])
    error, visible = _round_trip(tiny_scene, rows, cols, from_coords(0, rows, cols), from_coords)
    if len(error) >= 10:
      assert visible > 0.5 and error.max() < 1.0, (label, visible, error.max())
      checked += 1
  assert checked >= 1
  rows, cols = np.nonzero(seg[0] == 0)  # background: surface points from depth
  from_depth = lambda frame, i, j: _unproject(tiny_scene, frame, i, j)
  error, visible = _round_trip(tiny_scene, rows, cols, from_depth(0, rows, cols), from_depth)
  assert visible > 0.8 and error.max() < 1.0


def test_camera_follows_the_panning_look_at_path():
  config = synthetic.SceneConfig(height=32, width=32, num_frames=8, num_static_objects=(1, 1),
                                 num_dynamic_objects=(0, 0))
  scene = synthetic.sample_scene(1_000_007, config)
  example = synthetic.render_scene(scene, config)
  positions = example['camera/positions'].astype(np.float64)
  rotations = _rotation(example['camera/quaternions'])  # [t, 3, 3]
  t = len(positions)
  np.testing.assert_allclose(np.diff(positions, 2, axis=0), 0, atol=1e-5)  # linear in the frame index
  np.testing.assert_allclose(rotations[:, 2, 0], 0, atol=1e-6)  # camera +X horizontal (world up +Z)
  assert np.all(rotations[:, 2, 1] > 0)  # camera +Y points up
  forward = -rotations[:, :, 2]
  # Recover look-at points L_k = A + k B on the view rays c_k + s_k f_k by linear least squares.
  system = np.zeros((3 * t, 6 + t))
  for k in range(t):
    system[3 * k:3 * k + 3, 0:3] = np.eye(3)
    system[3 * k:3 * k + 3, 3:6] = k * np.eye(3)
    system[3 * k:3 * k + 3, 6 + k] = -forward[k]
  solution, *_ = np.linalg.lstsq(system, positions.reshape(-1), rcond=None)
  assert np.linalg.norm(system @ solution - positions.reshape(-1)) < 1e-4
  assert np.all(solution[6:] > 0)  # in front of the camera
  # The sampled look-at path lies on the optical axes and really pans.
  targets = scene.camera.lookats(t)
  np.testing.assert_allclose(np.cross(forward, targets - positions), 0, atol=1e-4)
  assert np.linalg.norm(targets[-1] - targets[0]) > 1e-3


def test_occluded_object_is_farther_than_its_occluder():
  frames = 2
  config = synthetic.SceneConfig(height=64, width=64, num_frames=frames)
  sphere = _object('sphere', (0.0, -4.0, 1.0), 0.8, seed=1)
  box = _object('box', (0.0, 0.0, 1.0), 1.0, seed=2)
  scene = _scene(_camera((0.0, -10.0, 2.0), (0.0, 0.0, 1.0), (0.0, 0.0, 1.0), frames), [sphere, box])
  example = synthetic.render_scene(scene, config)
  seg = example['segmentations'][..., 0]
  sphere_label, box_label = _label_of(example, sphere.position), _label_of(example, box.position)
  assert np.any(seg == box_label), 'the box is partly visible'
  hidden = np.array([[0.0, -1.0, 1.0]])  # the centre of the box's face towards the camera
  (x, y), = _project(example, 0, hidden)[0]
  i, j = int(y), int(x)
  assert seg[0, i, j] == sphere_label
  distance = np.linalg.norm(hidden[0] - example['camera/positions'][0])
  assert _depth(example)[0, i, j] < distance - 1.0


def test_objects_leave_the_view_when_the_camera_pans():
  frames = 6
  config = synthetic.SceneConfig(height=64, width=64, num_frames=frames)
  box = _object('box', (-4.0, 0.0, 0.5), 0.5, seed=3)
  # Frame 0 looks near `lookat_end`, the last frame near `lookat_start` (§3.12).
  scene = _scene(_camera((0.0, -10.0, 3.0), (6.0, 0.0, 0.5), (-3.0, 0.0, 0.5), frames), [box])
  example = synthetic.render_scene(scene, config)
  seg = example['segmentations'][..., 0]
  assert int(example['metadata/num_instances']) == 1
  assert np.any(seg[0] == 1) and not np.any(seg[-1] == 1)
  (x, _), = _project(example, frames - 1, example['instances/positions'][0, -1:].astype(np.float64))[0]
  assert x < 0


def test_background_points_leave_the_view_in_random_panning_scenes(tiny_scene):
  rows, cols = np.nonzero(tiny_scene['segmentations'][0, ..., 0] == 0)
  xy, front = _project(tiny_scene, TINY.num_frames - 1, _unproject(tiny_scene, 0, rows, cols))
  outside = (front <= 0) | np.any((xy < 0) | (xy > [TINY.width, TINY.height]), axis=-1)
  assert outside.any()


def test_conventions_match_the_kubric_fixture(golden_dir):
  fixture = np.load(golden_dir / 'kubric_tracks_tiny.npz')
  quaternions = fixture['input/camera/quaternions']
  np.testing.assert_allclose(synthetic.quaternion_to_matrix(quaternions.astype(np.float64)),
                             fixture['unit/camera/matrix_world'][:, :3, :3], atol=1e-6)
  positions = fixture['input/camera/positions'].astype(np.float64)
  rotations = _rotation(quaternions)
  for k in range(len(positions)):  # the fixture's cameras are look-at cameras with world up +Z
    q = synthetic.look_at_quaternion(positions[k], positions[k] - rotations[k, :, 2])
    np.testing.assert_allclose(q, quaternions[k], atol=1e-5)
  # The generator's camera (its lens constants, the rotations above) projects as the fixture's camera does.
  intrinsics = geometry.intrinsics_matrix(synthetic.FOCAL_LENGTH, synthetic.SENSOR_WIDTH, 64, 64)
  np.testing.assert_allclose(intrinsics, fixture['unit/camera/intrinsics'][0], atol=1e-6)
  points = fixture['unit/project_point/world_points'].astype(np.float64)
  projected = geometry.project(np.repeat(points[:, None], len(positions), 1),
                               np.broadcast_to(intrinsics, (len(positions), 3, 3)),
                               geometry.matrix_world(positions, rotations)).transpose(1, 0, 2)  # [t, n, 3]
  np.testing.assert_allclose(projected[..., :2], fixture['unit/project_point/result'][..., :2], atol=1e-5)
  np.testing.assert_array_equal(projected[..., 2], fixture['unit/project_point/result'][..., 2])
