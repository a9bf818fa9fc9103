"""The notebook API: uint8 video of any size in, tracks in its pixels and visibility out."""

import haiku as hk
import jax
import numpy as np
import pytest

import tapir
from tapir import conventions
from tapir import video as video_lib
from tapir.tracking import tracker as inference
from tests.conftest import SMALL_KWARGS


@pytest.fixture(scope='module')
def tracker(small_checkpoint):
  params, state = small_checkpoint
  return tapir.Tracker(params, state, SMALL_KWARGS, query_chunk_size=4)


def _video(rng, t=4, h=50, w=70):
  return rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def test_track_equals_the_model_on_the_resized_video(tracker, small_checkpoint, rng):
  video = _video(rng)
  queries = np.array([[0, 10.5, 20.5], [3, 40.0, 65.0], [1, 25.0, 35.0], [2, 0.0, 0.0], [0, 49.0, 1.0]],
                     np.float32)
  out = tracker.predict(video, queries, resize_to=(64, 64))  # 5 queries in chunks of 4: padded last chunk
  assert out.tracks.shape == (5, 4, 2) and out.visible.shape == (5, 4) and out.visible.dtype == bool

  resized = conventions.frames_to_model_input(video_lib.resize_video(video, (64, 64)))[None]
  scaled = queries * np.array([1, 64 / 50, 64 / 70], np.float32)
  forward = hk.transform_with_state(lambda v, q: tapir.TAPIR(**SMALL_KWARGS)(v, False, q))
  ref, _ = jax.jit(forward.apply)(*small_checkpoint, None, resized, scaled[None])
  np.testing.assert_allclose(out.tracks, np.asarray(ref['tracks'][0]) * np.array([70 / 64, 50 / 64]), atol=1e-3)
  np.testing.assert_allclose(out.occlusion, ref['occlusion'][0], atol=1e-4)
  np.testing.assert_array_equal(out.visible, conventions.visibility_from_logits(out.occlusion, out.expected_dist))


def test_track_at_native_resolution(tracker, rng):
  video = _video(rng, h=96, w=128)
  tracks, visible = tracker.track(video, tapir.grid_query_points((96, 128), stride=48), resize_to=None)
  assert tracks.shape == (6, 4, 2) and visible.shape == (6, 4)


@pytest.mark.parametrize('video, queries, message', [
    (np.zeros((4, 32, 32, 3), np.float32), np.zeros((1, 3)), 'uint8'),
    (np.zeros((4, 32, 32), np.uint8), np.zeros((1, 3)), r'\[frames, height, width, 3\]'),
    (np.zeros((4, 32, 32, 3), np.uint8), np.zeros((1, 2)), r'\[num_points, 3\]'),
    (np.zeros((4, 32, 32, 3), np.uint8), np.array([[4.0, 1.0, 1.0]]), 'outside the video'),
    (np.zeros((4, 32, 32, 3), np.uint8), np.array([[0.0, 33.0, 1.0]]), 'outside the video'),
])
def test_bad_inputs_raise(tracker, video, queries, message):
  with pytest.raises(ValueError, match=message):
    tracker.track(video, queries)


def test_checkpoint_for_another_preset_raises(golden_dir):
  with pytest.raises(ValueError, match='the checkpoint looks like: .*pyramid_level=0'):
    tapir.Tracker.from_checkpoint(golden_dir / 'tapir_small_checkpoint.npy', preset='bootstapir')
  with pytest.raises(ValueError, match='unknown preset'):
    tapir.Tracker.from_checkpoint(golden_dir / 'tapir_small_checkpoint.npy', preset='nope')


def test_grid_query_points():
  q = tapir.grid_query_points((16, 24), stride=8, query_frame=3)
  np.testing.assert_array_equal(q[:, 0], 3)
  np.testing.assert_array_equal(np.unique(q[:, 1]), [4.5, 12.5])
  np.testing.assert_array_equal(np.unique(q[:, 2]), [4.5, 12.5, 20.5])
  assert q[1].tolist() == [3, 4.5, 12.5]  # row-major


def test_mask_query_points():
  mask = np.zeros((20, 20), bool)
  mask[8:, :10] = True
  q = tapir.mask_query_points(mask, query_frame=1, stride=4)
  assert len(q) and np.all(mask[(q[:, 1] - 0.5).astype(int), (q[:, 2] - 0.5).astype(int)])
  sampled = tapir.mask_query_points(mask, num_points=30, seed=1)
  assert len(np.unique(sampled, axis=0)) == 30
  with pytest.raises(ValueError, match='boolean'):
    tapir.mask_query_points(mask.astype(np.uint8))
  with pytest.raises(ValueError, match='no query points'):
    tapir.mask_query_points(np.zeros((5, 5), bool))
