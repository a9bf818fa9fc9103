"""Every public boundary: bad input raises a ValueError naming the argument, or has a defined result."""

import jax
import numpy as np
import pytest

import tapir
from tapir.tracking import core
from tapir.tracking import tracker as inference
from tapir.tracking import cli as track_video
from tapir.data import tapvid
from tests.conftest import SMALL_KWARGS

TINY_CAUSAL = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32,
                   initial_resolution=(32, 32), pyramid_level=0, use_causal_conv=True)


@pytest.fixture(scope='module')
def tracker(small_checkpoint):
  return tapir.Tracker(*small_checkpoint, SMALL_KWARGS, query_chunk_size=4)


@pytest.fixture(scope='module')
def online():
  """A started stream of 24x40 frames with three points."""
  tracker = tapir.OnlineTracker.random_init(resize_to=None, **TINY_CAUSAL)
  tracker.start(np.zeros((24, 40, 3), np.uint8), np.array([[4.0, 4.0], [10.0, 20.0], [20.0, 30.0]]))
  return tracker


def _video(t=3, h=20, w=30):
  return np.zeros((t, h, w, 3), np.uint8)


@pytest.mark.parametrize('queries', [np.zeros((0, 3), np.float32), []])
def test_zero_queries_give_empty_outputs(tracker, queries):
  out = tracker.predict(_video(), queries)
  assert out.tracks.shape == (0, 3, 2) and out.visible.shape == (0, 3) and out.visible.dtype == bool
  assert out.occlusion.shape == (0, 3) and out.expected_dist.shape == (0, 3)


@pytest.mark.parametrize('size', [0, -1, 2.5, True])
def test_query_chunk_size_must_be_positive(small_checkpoint, size):
  with pytest.raises(ValueError, match=r'query_chunk_size must be an integer >= 1'):
    tapir.Tracker(*small_checkpoint, SMALL_KWARGS, query_chunk_size=size)
  with pytest.raises(ValueError, match=r'query_chunk_size must be an integer >= 1'):
    tapir.OnlineTracker(None, None, TINY_CAUSAL, query_chunk_size=size)  # checked before anything else


@pytest.mark.parametrize('resize_to', [(0, 0), (-8, 32), (32,), (32, 32, 3), (32.0, 32), 'auto', 5])
def test_resize_to_must_be_positive(tracker, resize_to):
  with pytest.raises(ValueError, match=r'resize_to must be \(height, width\)|resize_to must be'):
    tracker.predict(_video(), np.array([[0, 1.0, 1.0]]), resize_to=resize_to)
  with pytest.raises(ValueError, match='resize_to must be'):
    tapir.OnlineTracker.random_init(resize_to=resize_to, **TINY_CAUSAL)


def test_tracker_defaults_to_its_models_resolution(tracker, monkeypatch):
  """SMALL_KWARGS' model was built at 64x64: the video goes to the model at 64x64, not 256x256."""
  seen = []

  def record(video, hw):
    seen.append(tuple(hw))
    raise RuntimeError('stop before the model runs')

  monkeypatch.setattr(core, 'resize_video', record)
  with pytest.raises(RuntimeError, match='stop'):
    tracker.predict(_video(), np.array([[0, 1.0, 1.0]]))
  assert seen == [(64, 64)] and tracker.resolution == (64, 64)
  assert inference.model_resolution({}) == (256, 256)  # the released models'
  assert core.resolve_resize_to('model', (64, 64)) == (64, 64)


@pytest.mark.parametrize('stride, message', [
    (0, r'stride must be an integer >= 1'),
    (-4, r'stride must be an integer >= 1'),
    (1.5, r'stride must be an integer >= 1'),
    (21, r'stride must be in \[1, 20\]'),  # larger than the 20-row frame: would give no queries
])
def test_grid_stride_must_fit_the_frame(stride, message):
  with pytest.raises(ValueError, match=message):
    tapir.grid_query_points((20, 30), stride=stride)


def test_grid_stride_equal_to_the_frame_gives_one_point():
  assert tapir.grid_query_points((20, 30), stride=20).tolist() == [[0, 10.5, 10.5]]


@pytest.mark.parametrize('kwargs, message', [
    (dict(stride=0), 'stride must be an integer >= 1'),
    (dict(num_points=0), 'num_points must be an integer >= 1'),
])
def test_mask_query_points_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tapir.mask_query_points(np.ones((8, 8), bool), **kwargs)


@pytest.mark.parametrize('points, indices, message', [
    (np.zeros((1, 2)), [0.0], 'indices must be a 1-D sequence of integers'),
    (np.zeros((1, 2)), [3], r'indices must lie in \[0, 3\)'),
    (np.zeros((1, 2)), [-1], r'indices must lie in \[0, 3\)'),
    (np.zeros((2, 2)), [1, 1], 'indices must be distinct'),
    (np.zeros((2, 2)), [1], 'need one index per new query point'),
    (np.zeros((1, 3)), [1], r'query_points_yx must be \[num_points, 2\]'),
])
def test_replace_queries_bad_indices(online, points, indices, message):
  with pytest.raises(ValueError, match=message):
    online.replace_queries(np.zeros((24, 40, 3), np.uint8), points, indices)


def test_replace_no_queries_does_nothing(online):
  before = online.num_points
  online.replace_queries(np.zeros((24, 40, 3), np.uint8), [], [])
  assert online.num_points == before


@pytest.mark.parametrize('call', ['step', 'add_queries', 'replace_queries'])
def test_online_frame_of_changed_size(online, call):
  frame = np.zeros((32, 40, 3), np.uint8)
  args = {'step': (), 'add_queries': (np.zeros((1, 2)),), 'replace_queries': (np.zeros((1, 2)), [0])}[call]
  with pytest.raises(ValueError, match=r'frame is 32x40 .* started with 24x40 frames'):
    getattr(online, call)(frame, *args)


def test_online_start_without_points_then_add():
  tracker = tapir.OnlineTracker.random_init(resize_to=None, **TINY_CAUSAL)
  frame = np.zeros((24, 40, 3), np.uint8)
  tracker.start(frame, np.zeros((0, 2)))
  out = tracker.step(frame)
  assert out.tracks.shape == (0, 2) and out.visible.shape == (0,)
  assert tracker.add_queries(frame, []).tolist() == []
  assert tracker.add_queries(frame, [[4.0, 4.0]]).tolist() == [0]
  assert tracker.step(frame).tracks.shape == (1, 2)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_tapvid_non_finite_coordinates(bad):
  points = np.full((2, 3, 2), 0.5)
  points[1, 2, 0] = bad
  occluded = np.zeros((2, 3), bool)
  with pytest.raises(ValueError, match=r"'points' must be finite: 1 NaN/inf coordinate pair\(s\), the first at "
                     r'track 1, frame 2'):
    tapvid.make_example(_video(), points, occluded, 'v', 'first', resolution=None)


@pytest.mark.parametrize('kwargs, message', [
    (dict(resize=-1), r'resize must be an integer >= 1, or 0'),
    (dict(query_chunk_size=0), r'query_chunk_size must be an integer >= 1'),
])
def test_cli_arguments_are_checked_before_reading(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    track_video.track_file(str(tmp_path / 'missing.mp4'), None, None, grid=2, random_weights=True, **kwargs)


@pytest.mark.parametrize('queries, chunk, message', [
    ([[[0.0, np.nan, 4.0]]], 8, 'query_points must be finite'),
    ([[[0.0, 4.0, np.inf]]], 8, 'query_points must be finite'),
    ([[[0.0, 4.0, 4.0]]], 0, 'query_chunk_size must be None'),
    ([[[0.0, 4.0, 4.0]]], 2.5, 'query_chunk_size must be None'),
    ([[0.0, 4.0, 4.0]], 8, r'query_points must be \[batch=1, num_points, 3\]'),
])
def test_tapir_module_rejects_bad_concrete_inputs(queries, chunk, message):
  import haiku as hk  # pylint: disable=g-import-not-at-top

  def forward(video, query_points):
    return tapir.TAPIR(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=16, num_pips_iter=1,
                       initial_resolution=(16, 16))(video, False, query_points, query_chunk_size=chunk)

  with pytest.raises(ValueError, match=message):
    hk.transform_with_state(forward).init(jax.random.PRNGKey(0), np.zeros((1, 2, 16, 16, 3), np.float32),
                                          np.asarray(queries, np.float32))
