"""Kubric track conversion: parity with Kubric's own code on the golden scene, and the random wrapper."""

import numpy as np
import pytest

from tapir.data import kubric
from tapir.data import synthetic


@pytest.fixture(scope='module')
def fixture(golden_dir):
  data = np.load(golden_dir / 'kubric_tracks_tiny.npz')
  example = {k[len('input/'):]: data[k] for k in data.files if k.startswith('input/')}
  return data, example


def test_no_crop_tracks_match_kubric_conditionally_on_queries(fixture):
  data, example = fixture
  queries = data['out/B_nocrop_dense/query_points']
  source = np.stack([queries[:, 0], queries[:, 1] - 0.5, queries[:, 2] - 0.5], -1).round().astype(int)
  tracks = kubric.track_points(example, source)
  np.testing.assert_allclose(tracks.target_points, data['out/B_nocrop_dense/target_points'], atol=1e-3)
  np.testing.assert_array_equal(tracks.occluded, data['out/B_nocrop_dense/occluded'])
  np.testing.assert_array_equal(tracks.query_points, queries)
  assert tracks.occluded.any() and not tracks.occluded.all()


def test_camera_pieces(fixture):
  data, example = fixture
  np.testing.assert_allclose(kubric.camera_intrinsics(example, 64, 64), data['unit/camera/intrinsics'], atol=1e-6)
  np.testing.assert_allclose(kubric.camera_intrinsics(example, 48, 64),
                             data['unit/camera/intrinsics_input_size_48x64'], atol=1e-6)
  np.testing.assert_allclose(kubric.camera_matrix_world(example), data['unit/camera/matrix_world'], atol=1e-5)
  world = np.repeat(data['unit/project_point/world_points'][:, None], 8, 1)
  projected = kubric.project(world, kubric.camera_intrinsics(example, 64, 64), kubric.camera_matrix_world(example))
  np.testing.assert_allclose(projected.transpose(1, 0, 2), data['unit/project_point/result'], atol=1e-5)
  yx, frame = data['unit/unproject/yx'], int(data['unit/unproject/frame'])
  points = kubric.unproject(yx[:, 0], yx[:, 1], np.full(len(yx), frame), kubric.decode_depth(example),
                            kubric.camera_intrinsics(example, 64, 64), kubric.camera_matrix_world(example))
  np.testing.assert_allclose(points, data['unit/unproject/result'], atol=1e-4)


def test_object_reprojection(fixture):
  data, example = fixture
  transforms = kubric.box_transforms(example['instances/bboxes_3d'].astype(np.float64))
  coords = data['unit/reproject/box_coords']
  world = kubric.reproject_objects(coords, np.full(len(coords), int(data['unit/reproject/instance'])), transforms)
  np.testing.assert_allclose(world, data['unit/reproject/world'], atol=1e-5)
  matrix_world = kubric.camera_matrix_world(example)
  projected = kubric.project(world, kubric.camera_intrinsics(example, 64, 64), matrix_world)
  np.testing.assert_allclose(projected, data['unit/reproject/projections'], atol=1e-5)
  depth = np.linalg.norm(world - matrix_world[None, :, :3, 3], axis=-1)
  np.testing.assert_allclose(depth, data['unit/reproject/depths'], atol=1e-5)


def test_depth_and_segment_occlusion(fixture):
  data, example = fixture
  occluded = kubric.depth_segment_occluded(
      data['unit/occ_depth_seg/x_raster'].T, data['unit/occ_depth_seg/y_raster'].T, data['unit/occ_depth_seg/thresh'],
      np.full(5, int(data['unit/occ_depth_seg/seg_id'])), kubric.decode_depth(example),
      example['segmentations'][..., 0].astype(int))
  np.testing.assert_array_equal(occluded, data['unit/occ_depth_seg/result'])


@pytest.mark.parametrize('case', range(7))
def test_per_segment_quotas(fixture, case):
  data, _ = fixture
  g = f'unit/get_num_to_sample/{case}/'
  result = kubric.get_num_to_sample(data[g + 'counts'], int(data[g + 'tracks_to_sample']),
                                    float(data[g + 'max_sampled_frac']))
  np.testing.assert_array_equal(result, data[g + 'result'])


@pytest.mark.parametrize('random_crop', [False, True])
def test_training_example_shapes_ranges_and_determinism(fixture, random_crop):
  _, example = fixture
  make = lambda seed: kubric.make_training_example(example, np.random.default_rng(seed), tracks_to_sample=64,
                                                   random_crop=random_crop, train_size=(32, 32))
  out = make(3)
  assert out['video'].shape == (8, 32, 32, 3) and out['video'].dtype == np.float32
  assert -1 <= out['video'].min() and out['video'].max() <= 1
  assert out['query_points'].shape == (64, 3) and out['target_points'].shape == (64, 8, 2)
  assert out['occluded'].shape == (64, 8) and out['occluded'].dtype == bool
  q = out['query_points']
  assert (q[:, 0] == np.round(q[:, 0])).all() and (q[:, 1:] >= 0).all() and (q[:, 1:] <= 32).all()
  again = make(3)
  for key in out:
    np.testing.assert_array_equal(out[key], again[key])


def test_crop_and_resize_keep_colours_at_targets():
  """On a smooth scene, the query pixel's colour equals the colour sampled at its target on the query frame."""
  config = synthetic.SceneConfig(height=64, width=64, num_frames=4, texture_kinds=('noise',),
                                 num_static_objects=(2, 3), num_dynamic_objects=(0, 0))
  scene = synthetic.generate_scene(5, config)
  out = kubric.make_training_example(scene, np.random.default_rng(0), tracks_to_sample=64, random_crop=True,
                                     train_size=(48, 48))
  video = out['video']
  for (t, y, x), target, occluded in zip(out['query_points'], out['target_points'], out['occluded']):
    t = int(t)
    tx, ty = target[t]
    assert abs(tx - x) < 1e-3 and abs(ty - y) < 1e-3 or occluded[t]


def test_color_augment_keeps_range_and_shape():
  rng = np.random.default_rng(0)
  video = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  for seed in range(5):
    out = kubric.color_augment(video, np.random.default_rng(seed))
    assert out.shape == video.shape and out.dtype == np.float32
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6


def test_synthetic_tracks_follow_surfaces():
  config = synthetic.SceneConfig(height=64, width=64, num_frames=6)
  scene = synthetic.generate_scene(11, config)
  out = kubric.make_training_example(scene, np.random.default_rng(0), tracks_to_sample=128, random_crop=False,
                                     train_size=(64, 64))
  seg = scene['segmentations'][..., 0]
  hits = 0
  for (t, y, x), target, occluded in zip(out['query_points'], out['target_points'], out['occluded']):
    want = seg[int(t), int(y), int(x)]
    for f in np.nonzero(~occluded)[0]:
      col, row = np.clip(np.floor(target[f]).astype(int), 0, 63)
      window = seg[f, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2]
      assert (window == want).any()  # a visible track sits on its own surface
      hits += 1
  assert hits > 100 and out['occluded'].any()


def test_vflip_flips_rows_and_negates_y(fixture):
  """The reference's eval option (spec 3.8): rows flipped, y negated (not mirrored); nothing else changes."""
  _, example = fixture
  make = lambda vflip: kubric.make_training_example(example, np.random.default_rng(7), tracks_to_sample=32,
                                                    random_crop=False, train_size=(64, 64), vflip=vflip)
  plain, flipped = make(False), make(True)
  np.testing.assert_array_equal(flipped['video'], plain['video'][:, ::-1])
  np.testing.assert_array_equal(flipped['video'][:, 0], plain['video'][:, 63])  # top row <- bottom row
  np.testing.assert_array_equal(flipped['query_points'][:, [0, 2]], plain['query_points'][:, [0, 2]])
  np.testing.assert_array_equal(flipped['query_points'][:, 1], -plain['query_points'][:, 1])
  np.testing.assert_array_equal(flipped['target_points'][..., 0], plain['target_points'][..., 0])
  np.testing.assert_array_equal(flipped['target_points'][..., 1], -plain['target_points'][..., 1])
  np.testing.assert_array_equal(flipped['occluded'], plain['occluded'])
  assert (flipped['query_points'][:, 1] < 0).all()  # queries lie at pixel centres y + 0.5 > 0 before


def test_vflip_on_a_hand_built_clip():
  """A 2-frame, 8x8 clip of a static background: its track, flipped, by hand."""
  config = synthetic.SceneConfig(height=8, width=8, num_frames=4, num_static_objects=(0, 0),
                                 num_dynamic_objects=(0, 0))
  scene = synthetic.generate_scene(0, config)
  out = kubric.make_training_example(scene, np.random.default_rng(0), tracks_to_sample=4, random_crop=False,
                                     train_size=(8, 8), sampling_stride=4, vflip=True)
  video = np.asarray(scene['video'], np.float32) / 127.5 - 1
  np.testing.assert_allclose(out['video'], video[:, ::-1], atol=1e-6)
  for (t, y, x), target in zip(out['query_points'], out['target_points']):
    row, col = int(-y - 0.5), int(x - 0.5)  # the source pixel of the query: y = -(row + 0.5)
    assert 0 <= row < 8 and 0 <= col < 8 and t == int(t)
    np.testing.assert_allclose(target[int(t)], [col + 0.5, -(row + 0.5)], atol=1e-3)
