"""Drawing: sizes, where a point lands (raster convention), occlusion modes, fading trails, contact sheets."""

import numpy as np
from PIL import Image
import pytest

from tapir.tracking import paint as viz

RED = np.array([[255, 0, 0]], np.uint8)
GREY = 100


def _grey_video(t=3, h=24, w=32):
  return np.full((t, h, w, 3), GREY, np.uint8)


def test_point_colors_distinct_and_seeded():
  colors = viz.point_colors(20)
  assert colors.shape == (20, 3) and colors.dtype == np.uint8
  assert len({tuple(c) for c in colors}) == 20
  np.testing.assert_array_equal(viz.point_colors(5, seed=3), viz.point_colors(5, seed=3))
  assert viz.point_colors(0).shape == (0, 3)


def test_rainbow_colors_follow_position():
  queries = np.array([[0, 5.5, 1.5], [0, 5.5, 60.5], [0, 40.5, 1.5]], np.float32)  # (t, y, x)
  colors = viz.rainbow_colors(queries, (48, 64)).astype(int)
  assert colors.shape == (3, 3)
  assert np.abs(colors[0] - colors[1]).sum() > 100  # x changes the hue
  assert colors[2].sum() > colors[0].sum()  # further down is lighter


def test_paint_tracks_keeps_size_and_input():
  video = _grey_video()
  tracks = np.full((2, 3, 2), 10.5)
  out = viz.paint_tracks(video, tracks, np.ones((2, 3), bool))
  assert out.shape == video.shape and out.dtype == np.uint8
  assert (video == GREY).all()  # the input is not modified


@pytest.mark.parametrize('radius', [1, 2, 3.4])
def test_visible_point_lands_in_its_pixel(radius):
  rng = np.random.default_rng(0)
  video = _grey_video(t=1, h=24, w=32)
  for x, y in rng.uniform([0, 0], [32, 24], size=(50, 2)):
    out = viz.paint_tracks(video, np.array([[[x, y]]]), np.array([[True]]), RED, radius=radius)
    np.testing.assert_array_equal(out[0, int(np.floor(y)), int(np.floor(x))], RED[0])


def test_dot_is_centred_on_the_pixel():
  out = viz.paint_tracks(_grey_video(t=1), np.array([[[10.9, 12.2]]]), np.array([[True]]), RED, radius=2)
  rows, cols = np.nonzero(out[0, ..., 1] != GREY)
  assert (rows.min() + rows.max()) / 2 == 12 and (cols.min() + cols.max()) / 2 == 10
  assert rows.max() - rows.min() == 4 and cols.max() - cols.min() == 4  # 2 * radius + 1 pixels across


def test_occluded_point_hidden_leaves_frame_untouched():
  video = _grey_video(t=3)
  tracks = np.array([[[5.5, 5.5], [8.5, 6.5], [11.5, 7.5]]])
  visible = np.array([[True, True, False]])  # visible history, occluded now: no dot and no trail
  out = viz.paint_tracks(video, tracks, visible, RED, occluded='hide')
  np.testing.assert_array_equal(out[2], video[2])
  assert (out[1] != video[1]).any()


def test_occluded_point_hollow_is_a_ring():
  video = _grey_video(t=1)
  out = viz.paint_tracks(video, np.array([[[12.5, 12.5]]]), np.array([[False]]), RED, radius=4, occluded='hollow')
  np.testing.assert_array_equal(out[0, 12, 12], video[0, 12, 12])  # centre stays clear
  np.testing.assert_array_equal(out[0, 12, 16], RED[0])  # ring at the radius


def test_trails_fade_with_age():
  t, step = 8, 4
  xs = 4.5 + step * np.arange(t)  # moving right 4 px per frame along row 10
  tracks = np.stack([xs, np.full(t, 10.5)], -1)[None]
  video = _grey_video(t=t, h=20, w=40)
  out = viz.paint_tracks(video, tracks, np.ones((1, t), bool), RED, trail=t, radius=1)
  last = out[-1, 10].astype(int)  # [w, 3] the row of the trail in the last frame
  # Midpoints of the segments from frame s - 1 to s, oldest first; the dot (radius 1) covers none of them.
  mids = [int(4.5 + step * s - step / 2) for s in range(1, t)]
  distance = [np.abs(last[m] - GREY).sum() for m in mids]
  assert all(d > 0 for d in distance)
  assert all(a < b for a, b in zip(distance, distance[1:])), distance


def test_no_trail_before_the_window():
  tracks = np.stack([4.5 + 4 * np.arange(6), np.full(6, 10.5)], -1)[None]
  out = viz.paint_tracks(_grey_video(t=6, h=20, w=40), tracks, np.ones((1, 6), bool), RED, trail=2, radius=1)
  assert (out[-1, 10, :14] == GREY).all()  # segments older than 2 frames are not drawn


def test_paint_tracks_rejects_bad_shapes():
  with pytest.raises(ValueError, match='tracks'):
    viz.paint_tracks(_grey_video(t=3), np.zeros((2, 4, 2)), np.ones((2, 4), bool))
  with pytest.raises(ValueError, match='occluded'):
    viz.paint_tracks(_grey_video(t=3), np.zeros((2, 3, 2)), np.ones((2, 3), bool), occluded='dim')


def test_compare_tracks_side_by_side():
  video = _grey_video(t=2, h=24, w=32)
  pred = np.full((3, 2, 2), 5.5)
  gt = np.full((3, 2, 2), 20.5)
  out = viz.compare_tracks(video, pred, np.ones((3, 2), bool), gt, np.ones((3, 2), bool))
  assert out.shape == (2, 24, 64, 3)
  assert (out[0, 5, 5] != GREY).any() and (out[0, 20, 32 + 20] != GREY).any()
  assert (out[0, 20, 20] == GREY).all()  # the prediction half shows only the prediction


def test_contact_sheet_layout():
  frames = np.stack([np.full((6, 8, 3), 10 * (i + 1), np.uint8) for i in range(5)])
  sheet = viz.contact_sheet(frames, columns=3)
  assert sheet.shape == (2 * 6, 3 * 8, 3)
  assert (sheet[6:, 8:16] == 50).all()  # frame 4 at row 1, column 1
  assert (sheet[6:, 16:] == 0).all()  # empty cell
  labelled = viz.contact_sheet(np.zeros((4, 32, 48, 3), np.uint8), columns=2, labels=['a', 'b', 'c', 'd'])
  assert labelled.shape == (64, 96, 3) and labelled.any()


def test_save_image_round_trip(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  path = tmp_path / 'sub' / 'image.png'
  viz.save_image(path, image)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
