"""The rainbow view: the homography solver, background motion from tracks, the foreground split, the drawing."""

import dataclasses

import numpy as np
import pytest

from tapir.data import kubric
from tapir.data import synthetic
from tapir.tracking import paint
from tapir.tracking import rainbow

T, SIZE = 12, 64
H_KNOWN = np.array([[1.05, 0.02, 3.0], [-0.03, 0.97, -2.0], [1e-4, -2e-4, 1.0]])


def _extent(points, visible):  # [n, k, 2], [n, k] -> [n]: diagonal of the box around the visible positions
  out = np.full(len(points), np.nan)
  for i, (p, v) in enumerate(zip(points, visible)):
    if v.sum() >= 2:
      out[i] = np.linalg.norm(p[v].max(0) - p[v].min(0))
  return out


@pytest.fixture(scope='module')
def pan():
  """A 64 x 64, 12-frame synthetic clip under a pure pan (the camera turns about a fixed centre, so the background
  moves by exactly one homography per frame), with ground-truth tracks from a grid on 3 frames."""
  config = synthetic.SceneConfig(height=SIZE, width=SIZE, num_frames=T, num_static_objects=(3, 5),
                                 num_dynamic_objects=(2, 3), flying_probability=0.0)
  scene = synthetic.sample_scene(0, config)
  scene = dataclasses.replace(scene, camera=dataclasses.replace(scene.camera, end=scene.camera.start))
  example = synthetic.render_scene(scene, config)
  grid = np.arange(2, SIZE, 4)
  pixels = np.array([(f, r, c) for f in (0, T // 2, T - 1) for r in grid for c in grid])
  tracks = kubric.track_points(example, pixels)
  segment = example['segmentations'][pixels[:, 0], pixels[:, 1], pixels[:, 2], 0].astype(int)
  positions = example['instances/positions']
  moving_instance = np.ptp(positions, axis=1).max(-1) > 1e-6
  moving = np.zeros(len(pixels), bool)
  moving[segment > 0] = moving_instance[segment[segment > 0] - 1]
  # The true background motion, frame f -> frame T // 2: P R_ref^T R_f P^-1 with P the pixel intrinsics.
  p = np.diag([SIZE, SIZE, 1.0]) @ kubric.camera_intrinsics(example, SIZE, SIZE)[0]
  rotations = kubric.camera_matrix_world(example)[:, :3, :3]
  true = np.stack([p @ rotations[T // 2].T @ r @ np.linalg.inv(p) for r in rotations])
  estimated = rainbow.estimate_background_homographies(tracks.target_points, ~tracks.occluded)
  return dict(video=example['video'], tracks=tracks.target_points, visible=~tracks.occluded, moving=moving,
              true=true / true[:, 2:, 2:], estimated=estimated)


def test_normalised_dlt_is_exact_on_clean_points():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, SIZE, (30, 2))
  dst = rainbow.apply_homography(H_KNOWN, src)
  np.testing.assert_allclose(rainbow.fit_homography(src, dst), H_KNOWN, rtol=0, atol=1e-10)
  np.testing.assert_allclose(rainbow.fit_homography(src[:4], dst[:4]), H_KNOWN, rtol=0, atol=1e-10)
  with pytest.raises(ValueError, match='degenerate'):  # three of four points on a line
    rainbow.fit_homography([[0, 0], [1, 1], [2, 2], [0, 5]], dst[:4])


def test_ransac_recovers_a_known_homography_through_outliers():
  rng = np.random.default_rng(1)
  src = rng.uniform(0, SIZE, (60, 2))
  dst = rainbow.apply_homography(H_KNOWN, src)
  outlier = np.zeros(60, bool)
  outlier[rng.permutation(60)[:25]] = True  # 42% of the correspondences are off by 5 to 20 px
  offsets = rng.uniform(5, 20, (60, 1)) * np.stack([np.cos(a := rng.uniform(0, 2 * np.pi, 60)), np.sin(a)], -1)
  dst[outlier] += offsets[outlier]
  h, inliers = rainbow.ransac_homography(src, dst, threshold_px=1.0, seed=3)
  np.testing.assert_allclose(h, H_KNOWN, rtol=0, atol=1e-9)
  np.testing.assert_array_equal(inliers, ~outlier)
  again, _ = rainbow.ransac_homography(src, dst, threshold_px=1.0, seed=3)
  np.testing.assert_array_equal(h, again)  # deterministic given the seed


def test_frames_without_overlap_are_chained_through_their_neighbours():
  """A pan by 3 px per frame where each point lives 3 frames: far frames share no point with the reference."""
  rng = np.random.default_rng(2)
  t = 9
  base = rng.uniform(0, 100, (200, 2))
  shift = np.stack([3.0 * np.arange(t), -1.0 * np.arange(t)], -1)  # [t, 2]
  tracks = base[:, None] + shift[None]  # [n, t, 2]
  born = rng.integers(0, t - 2, 200)
  visible = (np.arange(t)[None] >= born[:, None]) & (np.arange(t)[None] < born[:, None] + 3)
  homographies = rainbow.estimate_background_homographies(tracks, visible, reference_frame=4, seed=7)
  want = np.tile(np.eye(3), (t, 1, 1))
  want[:, :2, 2] = shift[4] - shift
  np.testing.assert_allclose(homographies, want, atol=1e-9)
  again = rainbow.estimate_background_homographies(tracks, visible, reference_frame=4, seed=7)
  np.testing.assert_array_equal(homographies, again)


def test_background_motion_of_the_pan_is_recovered(pan):
  homographies = pan['estimated']  # rainbow.estimate_background_homographies(tracks, visible)
  grid = np.stack(np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5), -1).reshape(-1, 2)
  error = np.linalg.norm(rainbow.apply_homography(homographies[:, None], grid[None])
                         - rainbow.apply_homography(pan['true'][:, None], grid[None]), axis=-1)
  assert error.max() < 0.5  # px, over the whole frame


def test_static_trails_collapse_and_moving_ones_follow_their_paths(pan):
  tracks, visible, moving = pan['tracks'], pan['visible'], pan['moving']
  homographies = pan['estimated']
  drawn = rainbow.rainbow_trails(tracks, homographies, T - 1, T - 1)  # what the last frame draws: [n, T, 2]
  raw, compensated = _extent(tracks, visible), _extent(drawn, visible)
  assert moving.sum() >= 10 and (~moving).sum() >= 500
  assert np.nanmedian(compensated[~moving]) < 0.5 and np.nanmedian(raw[~moving]) > 10  # px
  # Moving points: the ground-truth path mapped into the last frame by the true background motion, not collapsed.
  to_last = np.linalg.solve(pan['true'][T - 1][None], pan['true'])  # [T, 3, 3] frame s -> frame T - 1
  truth = np.swapaxes(rainbow.apply_homography(to_last, np.swapaxes(tracks, 0, 1)), 0, 1)
  np.testing.assert_array_less(np.linalg.norm(drawn - truth, axis=-1)[visible], 0.5)
  assert np.nanmin(compensated[moving]) > 3 and np.nanmedian(compensated[moving]) > 20 * np.nanmedian(
      compensated[~moving])


def test_foreground_is_what_moves_through_the_scene(pan):
  homographies = pan['estimated']
  foreground = rainbow.split_foreground(pan['tracks'], pan['visible'], homographies, threshold_px=1.0)
  np.testing.assert_array_equal(foreground, pan['moving'])
  # Measured against the raw image motion instead, the pan makes nearly everything "move".
  identity = np.tile(np.eye(3), (T, 1, 1))
  assert rainbow.split_foreground(pan['tracks'], pan['visible'], identity, threshold_px=1.0).mean() > 0.8


def test_paint_rainbow_draws_static_points_as_dots(pan):
  tracks, visible, moving = pan['tracks'], pan['visible'], pan['moving']
  homographies = pan['estimated']
  black = np.zeros((T, SIZE, SIZE, 3), np.uint8)
  raw = _extent(tracks, visible)
  still = np.nonzero(~moving & visible.all(1) & (raw > 10))[0][0]  # a static point the pan sweeps across
  mover = np.nonzero(moving & visible.all(1))[0][0]  # its trail is its path through the scene

  def reach(painted, i):  # how far from the point's last position the last frame is painted
    rows, cols = np.nonzero(painted[-1].any(-1))
    return np.abs(np.stack([cols, rows], -1) + 0.5 - tracks[i, -1]).max()

  plain = paint.paint_tracks(black, tracks[still:still + 1], visible[still:still + 1], trail=T - 1, radius=1)
  assert reach(plain, still) > 8  # the pan sweeps the static point's raw trail across the image
  for i, far in ((still, False), (mover, True)):
    kw = dict(homographies=homographies, foreground=np.array([far]), radius=1)
    drawn = rainbow.paint_rainbow(black, tracks[i:i + 1], visible[i:i + 1], **kw)
    assert (reach(drawn, i) > 3) == far  # compensated: the static point is a dot, the mover keeps a trail
  some = np.arange(0, len(tracks), 3)  # the defaults (estimated motion and split) on a third of the points
  out = rainbow.paint_rainbow(pan['video'], tracks[some], visible[some])
  assert out.shape == pan['video'].shape and out.dtype == np.uint8 and (out != pan['video']).any()
  np.testing.assert_array_equal(out, rainbow.paint_rainbow(pan['video'], tracks[some], visible[some]))
  only_objects = rainbow.paint_rainbow(pan['video'], tracks[some], visible[some], foreground=moving[some],
                                       show_background=False)
  assert 0 < (only_objects != pan['video']).sum() < (out != pan['video']).sum()


_TRACKS = np.zeros((5, 4, 2))
_VISIBLE = np.ones((5, 4), bool)
_H = np.tile(np.eye(3), (4, 1, 1))
_FRAMES = np.zeros((4, 8, 8, 3), np.uint8)
_SRC = np.random.default_rng(0).uniform(0, 10, (6, 2))


@pytest.mark.parametrize('call, name', [
    (lambda: rainbow.estimate_background_homographies(_TRACKS[0], _VISIBLE), 'tracks'),
    (lambda: rainbow.estimate_background_homographies(_TRACKS.astype(bool), _VISIBLE), 'tracks'),
    (lambda: rainbow.estimate_background_homographies(_TRACKS, _VISIBLE.astype(np.uint8)), 'visible'),
    (lambda: rainbow.estimate_background_homographies(_TRACKS, _VISIBLE[:, :3]), 'visible'),
    (lambda: rainbow.estimate_background_homographies(_TRACKS, _VISIBLE, reference_frame=4), 'reference_frame'),
    (lambda: rainbow.estimate_background_homographies(_TRACKS, _VISIBLE, reference_frame=-1), 'reference_frame'),
    (lambda: rainbow.estimate_background_homographies(_TRACKS, _VISIBLE, threshold_px=0.0), 'threshold_px'),
    (lambda: rainbow.estimate_background_homographies(_TRACKS, _VISIBLE, threshold_px=np.nan), 'threshold_px'),
    (lambda: rainbow.estimate_background_homographies(_TRACKS, _VISIBLE, num_iterations=0), 'num_iterations'),
    (lambda: rainbow.estimate_background_homographies(_TRACKS, _VISIBLE, min_points=3), 'min_points'),
    (lambda: rainbow.estimate_background_homographies(_TRACKS, _VISIBLE, seed=-1), 'seed'),
    (lambda: rainbow.split_foreground(_TRACKS, _VISIBLE, _H, threshold_px=-1.0), 'threshold_px'),
    (lambda: rainbow.split_foreground(_TRACKS, _VISIBLE, _H, threshold_px='2'), 'threshold_px'),
    (lambda: rainbow.split_foreground(_TRACKS, _VISIBLE, _H[:3]), 'homographies'),
    (lambda: rainbow.split_foreground(_TRACKS, _VISIBLE, np.zeros((4, 3, 3))), 'homographies'),
    (lambda: rainbow.split_foreground(_TRACKS, _VISIBLE, _H * np.nan), 'homographies'),
    (lambda: rainbow.compensate_tracks(_TRACKS[..., :1], _H), 'tracks'),
    (lambda: rainbow.rainbow_trails(_TRACKS, _H, 4, 2), 'frame'),
    (lambda: rainbow.rainbow_trails(_TRACKS, _H, 1, -1), 'trail'),
    (lambda: rainbow.paint_rainbow(_FRAMES.astype(np.float32), _TRACKS, _VISIBLE, _H), 'frames'),
    (lambda: rainbow.paint_rainbow(_FRAMES[:3], _TRACKS, _VISIBLE, _H), 'tracks and visible'),
    (lambda: rainbow.paint_rainbow(_FRAMES, _TRACKS, _VISIBLE, _H, foreground=np.zeros(4, bool)), 'foreground'),
    (lambda: rainbow.paint_rainbow(_FRAMES, _TRACKS, _VISIBLE, _H, colors=np.zeros((5, 3))), 'colors'),
    (lambda: rainbow.paint_rainbow(_FRAMES, _TRACKS, _VISIBLE, _H, trail=-2), 'trail'),
    (lambda: rainbow.paint_rainbow(_FRAMES, _TRACKS, _VISIBLE, _H, radius=0), 'radius'),
    (lambda: rainbow.apply_homography(np.eye(2), _SRC), 'homography'),
    (lambda: rainbow.apply_homography(np.eye(3), _SRC[:, :1]), 'points'),
    (lambda: rainbow.apply_homography(_H, _SRC[None].repeat(3, 0)), 'do not broadcast'),
    (lambda: rainbow.fit_homography(_SRC[:3], _SRC[:3]), 'src and dst'),
    (lambda: rainbow.fit_homography(_SRC, _SRC[:5]), 'src and dst'),
    (lambda: rainbow.ransac_homography(_SRC, np.full((6, 2), np.inf)), 'src and dst'),
    (lambda: rainbow.ransac_homography(_SRC, _SRC, threshold_px=0), 'threshold_px'),
    (lambda: rainbow.ransac_homography(_SRC, _SRC, num_iterations=1.5), 'num_iterations'),
])
def test_bad_inputs_raise_naming_the_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call()
