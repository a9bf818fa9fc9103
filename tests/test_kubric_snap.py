"""snap_to_occluder in the MOVi-E track pipeline: the erosion, the query jitter, their use, the unchanged default."""

import hashlib

import numpy as np
import pytest

from tapir.data import kubric
from tapir.data import kubric_snap
from tapir.data import synthetic

# `make_training_example` digests on the golden Kubric scene, recorded with the pipeline before snap_to_occluder
# existed (floats rounded to 1e-3 so that last-bit BLAS differences do not matter; draws and flags are exact).
OLD_DIGESTS = {(0, False): '67bcceaacc7b37e4', (5, True): 'b5e6d4829ceace17'}


def _digest(out) -> str:
  h = hashlib.sha256()
  for key in sorted(out):
    v = np.asarray(out[key])
    if v.dtype.kind == 'f':
      v = np.round(v.astype(np.float64), 3)
    h.update(key.encode())
    h.update(np.ascontiguousarray(v).tobytes())
  return h.hexdigest()[:16]


class _Draws:
  """A stand-in generator that returns the given offsets and coins, to test the jitter rule case by case."""

  def __init__(self, offsets, coins):
    self.offsets, self.coins = np.asarray(offsets), np.asarray(coins, np.float64)

  def integers(self, low, high, size):
    assert (low, high) == (-1, 2) and tuple(size) == self.offsets.shape
    return self.offsets

  def uniform(self, size):
    assert size == len(self.coins)
    return self.coins


def _block_clip():
  """1 frame, 5 x 6: background at depth 10, an object (id 1) at depth 5 in rows 1-3, columns 3-4."""
  depth = np.full((1, 5, 6), 10.0, np.float32)
  seg = np.zeros((1, 5, 6), np.uint8)
  depth[0, 1:4, 3:5], seg[0, 1:4, 3:5] = 5.0, 1
  return seg, depth


@pytest.fixture(scope='module')
def box_scene():
  """A hand-built 24 x 24, 3-frame scene: a fixed camera, a box sliding right in front of floor and dome."""
  rng = np.random.default_rng(0)
  texture = lambda: synthetic.sample_texture(rng, ('noise',), (1.0, 1.0))
  camera = synthetic.CameraPath(np.array([0.0, -7.0, 2.0]), np.array([0.0, -7.0, 2.0]), np.zeros(3), np.zeros(3))
  box = synthetic.SceneObject('box', np.ones(3), 1.0, np.array([0.0, 0.0, 1.0]), np.array([0.3, 0.0, 0.0]),
                              np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(3), texture())
  scene = synthetic.Scene(camera, [box], texture(), texture(), np.array([0.0, 0.0, 1.0]), 0.5)
  config = synthetic.SceneConfig(height=24, width=24, num_frames=3, num_static_objects=(0, 0),
                                 num_dynamic_objects=(1, 1))
  return synthetic.render_scene(scene, config)


def test_erosion_masks_pixels_bordering_a_nearer_surface():
  seg, depth = _block_clip()
  want = seg[0].astype(np.int64)
  want[0:5, 2:6] = -1  # the background ring (diagonals included) around the object ...
  want[1:4, 3:5] = 1  # ... but not the object itself: nothing nearer borders it
  np.testing.assert_array_equal(kubric_snap.erode_segmentations(seg, depth)[0], want)
  # The threshold is 95% of the pixel's own depth; the frame edge (repeated pixels) masks nothing.
  step = np.array([[[10.0, 10.0, 9.6, 10.0, 9.4]] * 2], np.float32)  # 9.6 > 0.95 * 10 > 9.4
  np.testing.assert_array_equal(kubric_snap.erode_segmentations(np.zeros((1, 2, 5), int), step)[0],
                                [[0, 0, 0, -1, 0]] * 2)
  with pytest.raises(ValueError, match='segmentations and depth'):
    kubric_snap.erode_segmentations(seg[0], depth[0])


def test_jitter_moves_only_occluder_queries_onto_the_surface_behind():
  _, depth = _block_clip()
  pixels = [[0, 2, 3],  # object, left edge -> background on the left: moves (coin < 0.5)
            [0, 2, 3],  # the same, coin >= 0.5: stays
            [0, 2, 4],  # object -> object: no depth step, stays
            [0, 2, 2],  # background -> onto the nearer object: stays (only the near side moves)
            [0, 0, 0],  # corner, offset clamped back onto itself: stays
            [0, 3, 4]]  # object, bottom-right corner -> diagonal background: moves
  offsets = [[0, -1], [0, -1], [0, -1], [0, 1], [-1, -1], [1, 1]]
  coins = [0.2, 0.7, 0.0, 0.0, 0.0, 0.49]
  moved = kubric_snap.snap_query_pixels(_Draws(offsets, coins), pixels, depth)
  np.testing.assert_array_equal(moved, [[0, 2, 2], [0, 2, 3], [0, 2, 4], [0, 2, 2], [0, 0, 0], [0, 4, 5]])
  assert moved.dtype == np.int64


def test_segment_test_reads_the_eroded_map(box_scene):
  """A background pixel beside the box is visible on its own frame, unless the eroded map is used."""
  seg = box_scene['segmentations'][..., 0].astype(np.int64)
  eroded = kubric_snap.erode_segmentations(seg, kubric.decode_depth(box_scene))
  rows, cols = np.nonzero(seg[0] == 0)
  pixels = np.stack([np.zeros_like(rows), rows, cols], -1)
  plain = kubric.track_points(box_scene, pixels).occluded[:, 0]
  snapped = kubric.track_points(box_scene, pixels, snap_to_occluder=True).occluded[:, 0]
  # On its own frame a static background point passes every test but the segment test over its 4 nearest pixels,
  # which always include the pixel itself: masking can only hide it if its own pixel is masked, and does hide it if
  # no pixel around it keeps id 0.
  assert not plain.any()
  hidden = snapped & ~plain
  assert (eroded[0, rows, cols][hidden] == -1).all() and hidden.sum() >= 3
  padded = np.pad(eroded[0], 1, constant_values=-1)
  surrounded = np.stack([padded[rows + dy, cols + dx] for dy in range(3) for dx in range(3)], -1)
  assert snapped[~(surrounded == 0).any(-1)].all()


def test_training_example_snaps_queries_beside_the_box_to_the_box(box_scene):
  out = kubric.make_training_example(box_scene, np.random.default_rng(0), tracks_to_sample=400, sampling_stride=1,
                                     max_sampled_frac=1.0, random_crop=False, train_size=(24, 24),
                                     snap_to_occluder=True)
  seg = box_scene['segmentations'][..., 0].astype(np.int64)
  depth = kubric.decode_depth(box_scene)
  eroded = kubric_snap.erode_segmentations(seg, depth)
  frames = out['query_points'][:, 0].astype(int)
  query = np.floor(out['query_points'][:, 1:]).astype(int)  # (row, col) of the query pixel
  own = out['target_points'][np.arange(len(frames)), frames]  # (x, y): where the track is on its query frame
  tracked = np.floor(own[:, ::-1] + 1e-3).astype(int)  # (row, col) of the pixel that was tracked
  np.testing.assert_allclose(own, tracked[:, ::-1] + 0.5, atol=1e-2)  # tracks start at their pixel centres
  assert (eroded[frames, tracked[:, 0], tracked[:, 1]] >= 0).all()  # sampled from the eroded map
  moved = (query != tracked).any(-1)
  assert np.abs(query - tracked).max() <= 1 and 3 <= moved.sum() < len(moved)
  # A moved query sits on a surface at least 5% deeper than the tracked pixel (the dome behind the floor's horizon,
  # or the floor or dome behind the box), and keeps the nearer surface's track: beside the box, the box's (id 1),
  # which slides right while the background behind the query stays put.
  assert (depth[frames, tracked[:, 0], tracked[:, 1]] < 0.95 * depth[frames, query[:, 0], query[:, 1]])[moved].all()
  on_box = moved & (seg[frames, tracked[:, 0], tracked[:, 1]] == 1)
  assert on_box.sum() >= 3 and (seg[frames, query[:, 0], query[:, 1]][on_box] == 0).all()
  assert (np.diff(out['target_points'][on_box, :, 0], axis=1) > 0.5).all()
  # The tracks are those of the tracked pixels (with the eroded segment test); only the queries moved.
  again = kubric.track_points(box_scene, np.stack([frames, tracked[:, 0], tracked[:, 1]], -1), snap_to_occluder=True)
  np.testing.assert_allclose(out['target_points'], again.target_points, atol=1e-4)
  np.testing.assert_array_equal(out['occluded'], again.occluded)
  np.testing.assert_array_equal(out['query_points'][~moved], again.query_points[~moved])


@pytest.mark.parametrize('seed, random_crop', sorted(OLD_DIGESTS))
def test_default_is_the_old_pipeline_exactly(golden_dir, seed, random_crop):
  data = np.load(golden_dir / 'kubric_tracks_tiny.npz')
  example = {k[len('input/'):]: data[k] for k in data.files if k.startswith('input/')}
  make = lambda **kw: kubric.make_training_example(example, np.random.default_rng(seed), tracks_to_sample=64,
                                                   random_crop=random_crop, train_size=(32, 32), **kw)
  out = make()
  assert _digest(out) == OLD_DIGESTS[seed, random_crop]
  explicit = make(snap_to_occluder=False)
  for key in out:
    np.testing.assert_array_equal(out[key], explicit[key])
  snapped = make(snap_to_occluder=True)  # the option changes the draws, so it must not leak into the default
  assert _digest(snapped) != OLD_DIGESTS[seed, random_crop]


def test_the_training_pipeline_passes_snap_to_occluder_through(golden_dir):
  """`pipeline.convert` (what the MOVi-E stream runs per example) gives make_training_example's output with and
  without the option, and the config carries it (off by default)."""
  from configs import tapir as tapir_configs  # pylint: disable=g-import-not-at-top
  from tapir.data import pipeline  # pylint: disable=g-import-not-at-top
  data = np.load(golden_dir / 'kubric_tracks_tiny.npz')
  example = {k[len('input/'):]: data[k] for k in data.files if k.startswith('input/')}
  for snap in (False, True):
    via = pipeline.convert(example, 3, 64, (32, 32), False, False, snap_to_occluder=snap)
    direct = kubric.make_training_example(example, np.random.default_rng(3), tracks_to_sample=64, random_crop=False,
                                          train_size=(32, 32), snap_to_occluder=snap)
    for key in via:
      np.testing.assert_array_equal(via[key], direct[key], err_msg=f'{key} snap={snap}')
  assert _digest(pipeline.convert(example, 3, 64, (32, 32), False, False, snap_to_occluder=True)) != _digest(
      pipeline.convert(example, 3, 64, (32, 32), False, False))
  assert tapir_configs.get_config().data.snap_to_occluder is False
