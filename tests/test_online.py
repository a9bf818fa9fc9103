"""Causal TAPIR: golden parity of the online protocol, online == offline, constant-size state, query updates."""

import json

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tapir
from tapir.models import causal
from tests.conftest import SMALL_KWARGS

TINY_CAUSAL = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32,
                   initial_resolution=(32, 32), pyramid_level=0, use_causal_conv=True)


def test_online_protocol_matches_golden(golden_dir, small_checkpoint):
  """Spec §8.3 via the official-style stage API and the official context layout."""
  config = json.loads((golden_dir / 'causal_tapir_small_online.json').read_text())
  golden = np.load(golden_dir / 'causal_tapir_small_online.npz')
  kwargs = config['tapir_kwargs']
  video, queries = golden['video'], golden['query_points']

  def query_features(first_frame, query_points):
    model = tapir.TAPIR(**kwargs)
    return model.get_query_features(first_frame, False, query_points)

  def initial_context(num_points):
    return tapir.TAPIR(**kwargs).construct_initial_causal_state(num_points)

  def step(frame, features, context):
    model = tapir.TAPIR(**kwargs)
    grids = model.get_feature_grids(frame, False)
    out = model.estimate_trajectories(frame.shape[2:4], False, grids, features, None, 64, context, True)
    return out['tracks'][-1], out['occlusion'][-1], out['expected_dist'][-1], out['causal_context']

  features, _ = jax.jit(hk.transform_with_state(query_features).apply)(*small_checkpoint, None, video[:, :1],
                                                                         queries)
  context, _ = hk.transform_with_state(initial_context).apply(*small_checkpoint, None, queries.shape[1])
  assert sorted(context[0]) == ['tapir/~/pips_mlp_mixer/block_1_causal_1', 'tapir/~/pips_mlp_mixer/block_1_causal_2',
                                'tapir/~/pips_mlp_mixer/block_causal_1', 'tapir/~/pips_mlp_mixer/block_causal_2']
  assert context[0]['tapir/~/pips_mlp_mixer/block_causal_2'].shape == (1, 4, 2, 512) and len(context) == 4
  step = jax.jit(hk.transform_with_state(step).apply)
  for t in range(video.shape[1]):
    (tracks, occ, expd, context), _ = step(*small_checkpoint, None, video[:, t:t + 1], features, context)
    np.testing.assert_allclose(tracks, golden[f'frame{t}_tracks'], atol=1e-3)
    np.testing.assert_allclose(occ, golden[f'frame{t}_occlusion'], atol=1e-4)
    np.testing.assert_allclose(expd, golden[f'frame{t}_expected_dist'], atol=1e-4)


def _uint8_video(rng, t, h, w):
  return rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def test_online_tracker_equals_offline_causal_model(golden_dir, small_checkpoint, rng):
  kwargs = {**SMALL_KWARGS, 'use_causal_conv': True}
  video = _uint8_video(rng, 5, 64, 64)
  points = np.array([[10.5, 20.5], [40.0, 33.0], [63.0, 1.0]], np.float32)  # (y, x)
  tracker = tapir.OnlineTracker(*small_checkpoint, kwargs, resize_to=None)
  tracker.start(video[0], points)
  online = [tracker.step(frame) for frame in video]

  def offline(frames, query_points):
    model = tapir.TAPIR(**kwargs)
    grids = model.get_feature_grids(frames, False)
    features = model.get_query_features(frames, False, query_points, grids)
    out = model.estimate_trajectories(frames.shape[2:4], False, grids, features, None, 64)
    return out['tracks'][-1], out['occlusion'][-1]

  frames = tapir.conventions.frames_to_model_input(video)[None]
  queries = np.concatenate([np.zeros((3, 1), np.float32), points], -1)[None]
  (tracks, occ), _ = jax.jit(hk.transform_with_state(offline).apply)(*small_checkpoint, None, frames, queries)
  np.testing.assert_allclose(np.stack([o.tracks for o in online], 1), tracks[0], atol=1e-3)
  np.testing.assert_allclose(np.stack([o.occlusion for o in online], 1), occ[0], atol=1e-4)


def test_causal_model_does_not_look_ahead(rng):
  video = rng.uniform(-1, 1, size=(1, 6, 32, 32, 3)).astype(np.float32)
  queries = np.array([[[0, 5.0, 6.0], [1, 20.0, 12.0]]], np.float32)
  model = hk.transform_with_state(lambda v, q: tapir.TAPIR(**TINY_CAUSAL)(v, False, q))
  params, state = jax.jit(model.init)(jax.random.PRNGKey(0), video, queries)
  apply = jax.jit(model.apply)
  out, _ = apply(params, state, None, video, queries)
  changed = video.copy()
  changed[:, 4:] = -changed[:, 4:]
  out2, _ = apply(params, state, None, changed, queries)
  np.testing.assert_allclose(out2['tracks'][:, :, :4], out['tracks'][:, :, :4], atol=1e-5)
  assert np.abs(np.asarray(out2['tracks'][:, :, 4:] - out['tracks'][:, :, 4:])).max() > 1e-3


def test_long_stream_has_constant_state_and_one_compilation(rng):
  tracker = tapir.OnlineTracker.random_init(resize_to=None, **TINY_CAUSAL)
  video = _uint8_video(rng, 200, 32, 32)
  tracker.start(video[0], np.array([[8.0, 8.0], [20.5, 16.5]]))
  sizes = []
  for t, frame in enumerate(video):
    out = tracker.step(frame)
    if t in (0, 199):
      sizes.append(sum(a.size for a in jax.tree_util.tree_leaves(tracker.context)))
  assert sizes[0] == sizes[1] == 1 * 2 * 4 * 1 * 2 * (32 + 128)  # iterations x points x blocks x 2 frames x widths
  assert tracker.frames_seen == 200 and out.tracks.shape == (2, 2) and out.visible.shape == (2,)
  assert tracker._step._cache_size() == 1  # pylint: disable=protected-access


def test_replaced_query_restarts_from_zero_history(rng):
  video = _uint8_video(rng, 6, 32, 32)
  new_point = np.array([[12.0, 25.0]])
  a = tapir.OnlineTracker.random_init(resize_to=None, **TINY_CAUSAL)
  a.start(video[0], np.array([[5.0, 5.0], [20.0, 20.0]]))
  for frame in video[:3]:
    a.step(frame)
  a.replace_queries(video[3], new_point, [0])
  b = tapir.OnlineTracker(a.params, a.state, a.model_kwargs, resize_to=None)
  b.start(video[3], new_point)
  for frame in video[3:]:
    np.testing.assert_allclose(a.step(frame).tracks[0], b.step(frame).tracks[0], atol=1e-4)
  added = a.add_queries(video[5], new_point)
  assert added.tolist() == [2] and a.num_points == 3


def test_online_tracker_maps_resized_coordinates(rng):
  video = _uint8_video(rng, 3, 48, 40)
  tracker = tapir.OnlineTracker.random_init(resize_to=(32, 32), **TINY_CAUSAL)
  tracker.start(video[0], np.array([[47.0, 39.0], [0.0, 0.0]]))
  out = tracker.step(video[0])
  assert out.tracks.shape == (2, 2)
  with pytest.raises(ValueError, match='outside the video'):
    tracker.start(video[0], np.array([[49.0, 1.0]]))
  with pytest.raises(ValueError, match='causal model'):
    tapir.OnlineTracker.random_init(preset='tapir', **{k: v for k, v in TINY_CAUSAL.items() if k != 'use_causal_conv'})


def test_zero_state_any_shape_and_official_round_trip():
  state = causal.zero_state(batch=3, num_points=5, hidden_dim=64, num_blocks=2, num_pips_iter=4, num_levels=2)
  assert len(state) == 8 and state[0][1].activated.shape == (3, 5, 2, 256)
  official = causal.to_official(state)
  back = causal.from_official(official)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(state)
  with pytest.raises(ValueError, match='iterations'):
    causal.stack_by_level(state, num_pips_iter=4, num_levels=1)
