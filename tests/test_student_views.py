"""Tests of the student's view for BootsTAP (`tapir.data.student_views`).

The label maps are checked against the rendered pixels themselves: a clip whose channels encode the teacher's
raster (x, y) is rendered through every kind of view, and at each student pixel the decoded teacher coordinate
must be the inverse of `map_points`, while a marked teacher point must show up at `map_points` of it. Then the
identity, the crop formula of bootstap.md §3, flips, 90-degree turns, anti-aliasing, the corruptions, the knobs'
validation and the jax path of the maps.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tapir.data import student_views as sv

T = 5
TOL_PX = 1e-3  # float32 round-off of the coordinate encoding is ~1e-5 px; a half-pixel slip would be 0.5
OFF = sv.StudentViewConfig(color_augmentation=False, blur_probability=0.0, noise_probability=0.0,
                           jpeg_probability=0.0)  # geometry only


def _coord_video(t, hw):
  """[t, h, w, 3] in [-1, 1]: channel 0 encodes the raster x of each pixel centre, channel 1 its y."""
  h, w = hw
  y, x = np.mgrid[:h, :w].astype(np.float64) + 0.5
  frame = np.stack([x / w * 2 - 1, y / h * 2 - 1, np.zeros_like(x)], -1)
  return np.broadcast_to(frame, (t, h, w, 3)).astype(np.float32)


def _decode(image, hw):  # [..., 3] -> [..., 2] teacher raster (x, y)
  h, w = hw
  return np.stack([(image[..., 0] + 1) / 2 * w, (image[..., 1] + 1) / 2 * h], -1).astype(np.float64)


def _bilinear(image, xy):
  """image [h, w, c] read at raster points xy [n, 2] (x, y), half-pixel correct, points well inside."""
  index = xy.astype(np.float64) - 0.5
  low = np.floor(index).astype(int)
  f = index - low
  x0, y0 = low[:, 0], low[:, 1]
  fx, fy = f[:, :1], f[:, 1:]
  top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
  bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy


def _inverse(affines):  # [t, 2, 3] -> [t, 2, 3], from the forward maps (not the view's stored inverse)
  full = np.concatenate([affines.astype(np.float64), np.tile([[[0, 0, 1]]], (len(affines), 1, 1))], 1)
  return np.linalg.inv(full)[:, :2]


KINDS = {  # name: (config, teacher hw, student hw)
    'crop': (dataclasses.replace(OFF, crop_area=(0.3, 0.6)), (48, 64), (40, 56)),
    'zoom_out': (dataclasses.replace(OFF, crop_area=(0.8, 1.0)), (64, 64), (24, 24)),  # prefiltered
    'flip': (dataclasses.replace(OFF, flip_probability=1.0), (48, 64), (48, 64)),
    'rotation': (dataclasses.replace(OFF, max_rotation_deg=40.0), (64, 64), (48, 48)),
    'time_varying': (dataclasses.replace(OFF, max_rotation_deg=30.0, flip_probability=1.0, time_varying=True,
                                         max_box_motion=1.0), (64, 80), (40, 48)),
    'time_varying_linear': (dataclasses.replace(OFF, crop_area=(0.5, 1.0), time_varying=True, max_box_motion=1.0,
                                                motion_profile='linear'), (64, 64), (32, 32)),
}


def _view(kind, seed=0):
  config, hw_t, hw_s = KINDS[kind]
  return sv.draw_view(np.random.default_rng(seed), config, T, hw_t, hw_s), config, hw_t, hw_s


def _translation_view():  # a box of the student's size at a fractional offset: a pure translation
  return sv.view_from_boxes(np.tile([[7.6, 5.3, 7.6 + 32, 5.3 + 40]], (T, 1)), (32, 40)), OFF, (48, 64), (32, 40)


@pytest.mark.parametrize('kind', ['translation', *KINDS])
def test_rendered_pixels_agree_with_the_label_maps(kind):
  view, config, hw_t, hw_s = _translation_view() if kind == 'translation' else _view(kind)
  student = sv.render_view(_coord_video(T, hw_t), view, np.random.default_rng(1), config, hw_s)
  assert student.shape == (T, *hw_s, 3) and student.dtype == np.float32
  (h, w), margin = hw_t, 4.0  # away from the teacher's border, where edge clamping and the prefilter bend
  inverse = _inverse(view.affines)
  rows, cols = np.mgrid[:hw_s[0], :hw_s[1]] + 0.5
  centres = np.stack([cols, rows], -1).reshape(-1, 2)  # [h' w', 2] student pixel centres (x', y')
  rng = np.random.default_rng(2)
  marked = np.stack([rng.uniform(margin + 2, w - margin - 2, 400), rng.uniform(margin + 2, h - margin - 2, 400)], -1)
  mapped = sv.map_points(view.affines, np.repeat(marked[:, None].astype(np.float32), T, 1))  # [n, t, 2]
  for t in range(T):
    # 1. The decoded teacher coordinate at each student pixel is the inverse of the label map there.
    expected = centres @ inverse[t, :, :2].T + inverse[t, :, 2]
    inside = np.all((expected >= margin) & (expected <= np.array([w, h]) - margin), -1)
    assert inside.mean() > 0.3
    decoded = _decode(student[t].reshape(-1, 3), hw_t)
    np.testing.assert_allclose(decoded[inside], expected[inside], atol=TOL_PX)
    # 2. A marked teacher point shows up in the student frame at map_points of it.
    seen = np.all((mapped[:, t] >= 1) & (mapped[:, t] <= np.array(hw_s[::-1]) - 1), -1)
    assert seen.sum() > 20
    read = _decode(_bilinear(student[t], mapped[seen, t]), hw_t)
    np.testing.assert_allclose(read, marked[seen], atol=TOL_PX)


@pytest.mark.parametrize('kind', ['rotation', 'time_varying', 'zoom_out'])
def test_a_blob_lands_where_its_centre_is_mapped(kind):
  """Non-affine content: the intensity centroid of a Gaussian blob in the student is map_points of its centre."""
  view, config, hw_t, hw_s = _view(kind, seed=3)
  h, w = hw_t
  middle = _inverse(view.affines)[T // 2]
  centre = middle[:, :2] @ (np.array(hw_s[::-1]) * 0.45) + middle[:, 2]  # near the middle of the view
  y, x = np.mgrid[:h, :w] + 0.5
  blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * 2.0 ** 2))
  video = np.broadcast_to((blob * 2 - 1)[None, ..., None], (T, h, w, 3)).astype(np.float32)
  student = (sv.render_view(video, view, np.random.default_rng(0), config, hw_s)[..., 0] + 1) / 2  # [t, h', w']
  target = sv.map_points(view.affines, np.tile(centre.astype(np.float32), (1, T, 1)))[0]  # [t, 2]
  rows, cols = np.mgrid[:hw_s[0], :hw_s[1]] + 0.5
  for t in range(T):
    weights = student[t] / student[t].sum()
    assert max(weights[0].max(), weights[-1].max(), weights[:, 0].max(), weights[:, -1].max()) < 1e-6  # all in view
    np.testing.assert_allclose([(weights * cols).sum(), (weights * rows).sum()], target[t], atol=0.05)


def test_time_varying_views_move_smoothly_and_are_still_without_motion():
  view, _, _, _ = _view('time_varying_linear')
  assert not np.allclose(view.boxes[0], view.boxes[-1])
  np.testing.assert_allclose(np.diff(view.boxes, 2, axis=0), 0, atol=1e-4)  # linear in time
  cosine, _, _, _ = _view('time_varying')
  steps = np.abs(np.diff(cosine.boxes, axis=0)).sum(-1)
  assert steps[0] < steps[1] and steps[-1] < steps[-2]  # eases in and out
  still = sv.draw_view(np.random.default_rng(0), dataclasses.replace(KINDS['time_varying'][0], max_box_motion=0.0),
                       T, (64, 80), (40, 48))
  np.testing.assert_array_equal(still.affines, np.broadcast_to(still.affines[:1], still.affines.shape))


def test_identity_view_leaves_labels_and_pixels_unchanged():
  config = dataclasses.replace(OFF, crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0))
  rng = np.random.default_rng(0)
  view = sv.draw_view(rng, config, T, (40, 56), (40, 56))
  np.testing.assert_array_equal(view.affines, np.broadcast_to(np.eye(2, 3, dtype=np.float32), (T, 2, 3)))
  tracks = rng.uniform(-5, 60, (7, T, 2)).astype(np.float32)
  np.testing.assert_array_equal(sv.map_points(view.affines, tracks), tracks)
  queries = np.stack([rng.integers(0, T, 7), rng.uniform(0, 40, 7), rng.uniform(0, 56, 7)], -1).astype(np.float32)
  np.testing.assert_array_equal(sv.map_queries(view.affines, queries), queries)
  video = rng.uniform(-1, 1, (T, 40, 56, 3)).astype(np.float32)
  np.testing.assert_array_equal(sv.render_view(video, view, rng, config, (40, 56)), video)


def test_crop_formula_maps_a_pixel_centre_query_to_the_expected_pixel_centre():
  y0, x0, y1, x1 = 8.0, 16.0, 40.0, 32.0  # 16 wide -> 48 columns (x3), 32 high -> 32 rows (x1)
  view = sv.view_from_boxes(np.tile([[y0, x0, y1, x1]], (T, 1)), (32, 48))
  xy = np.random.default_rng(0).uniform(0, 64, (9, T, 2)).astype(np.float32)
  formula = np.stack([(xy[..., 0] - x0) * 48 / (x1 - x0), (xy[..., 1] - y0) * 32 / (y1 - y0)], -1)
  np.testing.assert_allclose(sv.map_points(view.affines, xy), formula, atol=1e-4)
  # Teacher pixel (row 20, col 21), centre (y, x) = (20.5, 21.5) -> student centre (12.5, 16.5): row 12, col 16.
  np.testing.assert_allclose(sv.map_queries(view.affines, np.float32([[2, 20.5, 21.5]])), [[2, 12.5, 16.5]])
  video = np.full((T, 48, 64, 3), -1, np.float32)
  video[:, 20, 21] = 1
  student = sv.render_view(video, view, np.random.default_rng(0), OFF, (32, 48))
  assert np.all(student[:, 12, 16] == 1) and np.all(student[:, :, :, 0].reshape(T, -1).argmax(-1) == 12 * 48 + 16)
  for seed in range(5):  # drawn, unturned views follow the same formula for their own boxes
    drawn = sv.draw_view(np.random.default_rng(seed), OFF, T, (48, 64), (24, 40))
    b = drawn.boxes[0].astype(np.float64)
    expected = np.stack([(xy[..., 0] - b[1]) * 40 / (b[3] - b[1]), (xy[..., 1] - b[0]) * 24 / (b[2] - b[0])], -1)
    np.testing.assert_allclose(sv.map_points(drawn.affines, xy), expected, atol=1e-3)
    assert 0 <= b[0] < b[2] <= 48 and 0 <= b[1] < b[3] <= 64


@pytest.mark.parametrize('hw_student', [(32, 48), (20, 30)])
def test_flip_of_the_full_frame_maps_x_to_width_minus_x(hw_student):
  view = sv.view_from_boxes(np.tile([[0.0, 0.0, 32.0, 48.0]], (T, 1)), hw_student, flip=True)
  h_s, w_s = hw_student
  xy = np.random.default_rng(0).uniform(0, 48, (6, T, 2)).astype(np.float32)
  mapped = sv.map_points(view.affines, xy)
  np.testing.assert_allclose(mapped[..., 0], w_s - xy[..., 0] * w_s / 48, atol=1e-4)
  np.testing.assert_allclose(mapped[..., 1], xy[..., 1] * h_s / 32, atol=1e-4)
  if hw_student == (32, 48):
    video = np.random.default_rng(1).uniform(-1, 1, (T, 32, 48, 3)).astype(np.float32)
    np.testing.assert_array_equal(sv.render_view(video, view, None, OFF, hw_student), video[:, :, ::-1])


def test_a_quarter_turn_shows_the_content_turned_anticlockwise():
  view = sv.view_from_boxes(np.tile([[0.0, 0.0, 32.0, 32.0]], (T, 1)), (32, 32), rotation_deg=90.0)
  video = np.random.default_rng(0).uniform(-1, 1, (T, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(sv.render_view(video, view, None, OFF, (32, 32)), np.rot90(video, 1, axes=(1, 2)),
                             atol=1e-5)


def test_downscaling_is_antialiased():
  video = np.broadcast_to(np.where(np.indices((60, 60)).sum(0) % 2 == 0, 0.9, -0.9)[None, ..., None],
                          (1, 60, 60, 3)).astype(np.float32)  # a 1-pixel checkerboard
  view = sv.view_from_boxes(np.float32([[0, 0, 60, 60]]), (20, 20))  # 3 teacher pixels per student pixel
  student = sv.render_view(video, view, None, OFF, (20, 20))
  assert np.abs(student).max() < 0.9 / 3 + 1e-5  # point sampling would alias it to full contrast (0.9)
  flat = np.full_like(video, 0.25)
  np.testing.assert_allclose(sv.render_view(flat, view, None, OFF, (20, 20)), 0.25, atol=1e-6)


def test_in_frame_boundaries():
  xy = np.float32([[0, 0], [47.999, 31.999], [48, 5], [5, 32], [-1e-4, 5], [5, -1e-4], [24, 16]])
  expected = [True, True, False, False, False, False, True]
  np.testing.assert_array_equal(sv.in_frame(xy, (32, 48)), expected)
  np.testing.assert_array_equal(np.asarray(sv.in_frame(jnp.asarray(xy), (32, 48))), expected)


def _smooth_video(seed=0, t=3, h=32, w=40):
  y, x = np.mgrid[:h, :w] / 8.0
  phase = np.random.default_rng(seed).uniform(0, 6, (t, 1, 1, 3))
  return (0.7 * np.sin((x + 2 * y)[..., None] + phase)).astype(np.float32)


ALONE = {
    'color': dict(color_augmentation=True),
    'blur': dict(blur_probability=1.0, blur_sigma=(1.0, 1.0)),
    'noise': dict(noise_probability=1.0, noise_std=(0.02, 0.02)),
    'jpeg': dict(jpeg_probability=1.0, jpeg_quality=(50, 50)),
}


@pytest.mark.parametrize('name', ALONE)
def test_each_corruption_alone_changes_pixels(name):
  config = dataclasses.replace(OFF, crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), **ALONE[name])
  video = _smooth_video()
  view = sv.draw_view(np.random.default_rng(0), config, 3, (32, 40), (32, 40))
  assert (view.blur_sigma, view.noise_std, view.jpeg_quality) == (
      1.0 if name == 'blur' else 0.0, 0.02 if name == 'noise' else 0.0, 50 if name == 'jpeg' else 0)
  out = sv.render_view(video, view, np.random.default_rng(1), config, (32, 40))
  assert np.abs(out - video).max() > 1e-2
  assert out.dtype == np.float32 and np.all(np.abs(out) <= 1)
  off = sv.render_view(video, view._replace(blur_sigma=0.0, noise_std=0.0, jpeg_quality=0), None, OFF, (32, 40))
  np.testing.assert_array_equal(off, video)


def test_corruptions_are_deterministic_per_seed_and_stay_in_range():
  config = sv.StudentViewConfig(blur_probability=1.0, noise_probability=1.0, noise_std=(0.3, 0.3),
                                jpeg_probability=1.0, flip_probability=0.5, max_rotation_deg=20.0,
                                time_varying=True)
  video = np.clip(_smooth_video() * 1.5, -1, 1)  # touches both ends of the range

  def run(seed):
    rng = np.random.default_rng(seed)
    view = sv.draw_view(rng, config, 3, (32, 40), (24, 24))
    return view, sv.render_view(video, view, rng, config, (24, 24))

  (view_a, a), (view_b, b), (_, c) = run(7), run(7), run(8)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(view_a.affines, view_b.affines)
  assert not np.array_equal(a, c)
  assert a.shape == (3, 24, 24, 3) and a.dtype == np.float32 and a.min() >= -1 and a.max() <= 1


def test_corruption_knobs_do_not_change_the_geometry_of_a_seed():
  views = [sv.draw_view(np.random.default_rng(4), c, T, (48, 64), (32, 32))
           for c in (OFF, sv.StudentViewConfig(blur_probability=1.0, jpeg_probability=0.7))]
  np.testing.assert_array_equal(views[0].affines, views[1].affines)


@pytest.mark.parametrize('field, value', [
    ('crop_area', (0.0, 1.0)), ('crop_area', (0.6, 0.3)), ('crop_area', (0.3, 1.2)), ('crop_area', 0.5),
    ('crop_aspect', (0.0, 2.0)), ('crop_aspect', (1.0, float('inf'))), ('flip_probability', 1.5),
    ('flip_probability', -0.1), ('max_rotation_deg', 200.0), ('max_rotation_deg', float('nan')),
    ('time_varying', 1), ('max_box_motion', 2.0), ('motion_profile', 'quadratic'), ('color_augmentation', 'yes'),
    ('blur_probability', 2.0), ('blur_sigma', (-1.0, 1.0)), ('noise_probability', True), ('noise_std', (0.0, 2.0)),
    ('jpeg_probability', -1.0), ('jpeg_quality', (0, 50)), ('jpeg_quality', (40.5, 90)), ('jpeg_quality', (90, 40)),
])
def test_bad_knobs_raise_naming_the_knob(field, value):
  with pytest.raises(ValueError, match=field):
    sv.StudentViewConfig(**{field: value})


def test_bad_arguments_raise_naming_the_argument():
  assert sv.StudentViewConfig(crop_area=[0.3, 1.0]).crop_area == (0.3, 1.0)  # config lists become tuples
  rng = np.random.default_rng(0)
  for kwargs, name in ((dict(hw_teacher=(0, 5)), 'hw_teacher'), (dict(hw_student=(4,)), 'hw_student'),
                       (dict(num_frames=0), 'num_frames')):
    args = dict(num_frames=T, hw_teacher=(32, 32), hw_student=(16, 16)) | kwargs
    with pytest.raises(ValueError, match=name):
      sv.draw_view(rng, OFF, **args)
  view = sv.draw_view(rng, OFF, T, (32, 32), (16, 16))
  with pytest.raises(ValueError, match='frames'):
    sv.render_view(np.zeros((T + 1, 32, 32, 3), np.float32), view, rng, OFF, (16, 16))
  with pytest.raises(ValueError, match='query_points'):
    sv.map_queries(view.affines, np.float32([[0.5, 3, 3]]))
  with pytest.raises(ValueError, match='xy'):
    sv.map_points(view.affines, np.zeros((3, T + 1, 2), np.float32))


def test_maps_on_jax_arrays_equal_numpy_also_under_jit():
  rng = np.random.default_rng(0)
  views = [_view('time_varying', seed)[0] for seed in range(2)]
  affines = np.stack([v.affines for v in views])  # [b, t, 2, 3]
  tracks = rng.uniform(0, 64, (2, 6, T, 2)).astype(np.float32)  # [b, n, t, 2]
  queries = np.stack([rng.integers(0, T, (2, 6)), rng.uniform(0, 64, (2, 6)), rng.uniform(0, 80, (2, 6))],
                     -1).astype(np.float32)  # [b, n, 3]
  expected_points = sv.map_points(affines[:, None], tracks)
  expected_queries = sv.map_queries(affines[:, None], queries)
  assert expected_points.shape == (2, 6, T, 2) and expected_queries.shape == (2, 6, 3)
  for fn in (lambda f: f, jax.jit):
    points = fn(sv.map_points)(jnp.asarray(affines)[:, None], jnp.asarray(tracks))
    mapped_queries = fn(sv.map_queries)(jnp.asarray(affines)[:, None], jnp.asarray(queries))
    assert isinstance(points, jax.Array) and isinstance(mapped_queries, jax.Array)
    np.testing.assert_allclose(np.asarray(points), expected_points, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mapped_queries), expected_queries, atol=1e-4)
  # A query maps by its own frame's affine, as a track point at that frame does.
  frame = queries[..., 0].astype(int)
  at_frame = np.take_along_axis(sv.map_points(affines[:, None], np.repeat(queries[..., None, :0:-1], T, 2)),
                                frame[..., None, None], 2)[:, :, 0]
  np.testing.assert_allclose(expected_queries[..., 1:], at_frame[..., ::-1], atol=1e-5)
