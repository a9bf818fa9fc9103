"""Causal TAPIR: golden parity of the online protocol, online == offline, constant-size state, query updates."""

import json
import logging

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


def _concatenating_reference(params, state, kwargs, video, first_points, added_points, added_at):
  """The online protocol as the tracker ran it before slots: the step on exactly the active points, new points'
  features and zero histories concatenated after the old ones. Returns per frame tracks [n, 2] (model pixels)."""

  def query_features(frame, query_points):
    return tapir.TAPIR(**kwargs).get_query_features(frame, False, query_points)

  def step(frame, features, context):
    model = tapir.TAPIR(**kwargs)
    grids = model.get_feature_grids(frame, False)
    out = model.estimate_trajectories(frame.shape[2:4], False, grids, features, None, 64, context, True)
    return out['tracks'][-1], out['causal_context']

  query_features = jax.jit(hk.transform_with_state(query_features).apply)
  step = jax.jit(hk.transform_with_state(step).apply)
  frames = tapir.conventions.frames_to_model_input(video)[:, None, None]  # [t, 1, 1, h, w, 3]
  with_t = lambda p: np.concatenate([np.zeros((len(p), 1), np.float32), p], -1)[None]
  features, _ = query_features(params, state, None, frames[0], with_t(first_points))
  zeros = lambda n: causal.zero_state(1, n, kwargs['mixer_hidden_dim'], kwargs['num_mixer_blocks'], 4, 1)
  context = zeros(len(first_points))
  out = []
  for t, frame in enumerate(frames):
    if t == added_at:
      new, _ = query_features(params, state, None, frame, with_t(added_points))
      concat = lambda a, b: jnp.concatenate([a, b], axis=1)
      features = jax.tree_util.tree_map(concat, features, new)
      context = jax.tree_util.tree_map(concat, context, zeros(len(added_points)))
    (tracks, context), _ = step(params, state, None, frame, features, context)
    out.append(np.asarray(tracks[0, :, 0]))
  return out


@pytest.mark.parametrize('slots', [dict(), dict(min_slots=3, capacity=5)], ids=['empty-slots', 'no-empty-slot'])
def test_slots_give_the_numbers_of_the_points_alone(rng, slots):
  video = _uint8_video(rng, 6, 32, 32)
  first, added = np.array([[5.0, 5.0], [20.5, 12.0], [30.0, 2.0]]), np.array([[12.0, 25.0], [1.0, 30.5]])
  tracker = tapir.OnlineTracker.random_init(resize_to=None, **slots, **TINY_CAUSAL)
  tracker.start(video[0], first)
  online = []
  for t, frame in enumerate(video):
    if t == 3:
      assert tracker.add_queries(frame, added).tolist() == [3, 4]
    online.append(tracker.step(frame).tracks)
  assert tracker.num_slots == (8 if not slots else 5)
  reference = _concatenating_reference(tracker.params, tracker.state, tracker.model_kwargs, video, first, added, 3)
  for got, want in zip(online, reference):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_slot_indices_are_stable_and_reused_lowest_first(rng):
  video = _uint8_video(rng, 8, 32, 32)
  points = np.array([[4.0, 4.0], [10.0, 20.0], [25.0, 7.0], [16.0, 16.0], [28.0, 28.0]])
  alone = tapir.OnlineTracker.random_init(resize_to=None, **TINY_CAUSAL)
  alone.start(video[0], points[[1, 3]])
  tracker = tapir.OnlineTracker(alone.params, alone.state, alone.model_kwargs, resize_to=None, min_slots=2)
  tracker.start(video[0], points[:4])
  assert tracker.num_slots == 4
  tracker.remove_queries([0, 2])  # 2 left: they move to a bucket of 2 slots, keeping their indices
  assert tracker.indices.tolist() == [1, 3] and tracker.num_slots == 2
  for frame in video[:3]:
    np.testing.assert_allclose(tracker.step(frame).tracks, alone.step(frame).tracks, atol=1e-5, rtol=0)
  assert tracker.add_queries(video[3], points[4:]).tolist() == [0]  # the lowest free index
  assert tracker.indices.tolist() == [0, 1, 3] and tracker.step(video[3]).tracks.shape == (3, 2)
  tracker.replace_queries(video[4], points[:1], [3])
  with pytest.raises(ValueError, match=r'indices must be those of active points \(\[0, 1, 3\]\)'):
    tracker.remove_queries([2])
  tracker.clear()
  assert tracker.num_points == 0 and tracker.step(video[5]).tracks.shape == (0, 2)
  assert tracker.add_queries(video[6], points[:2]).tolist() == [0, 1]


def test_capacity_is_a_hard_limit(rng):
  frame = _uint8_video(rng, 1, 32, 32)[0]
  tracker = tapir.OnlineTracker.random_init(resize_to=None, capacity=3, **TINY_CAUSAL)
  tracker.start(frame, np.array([[4.0, 4.0], [8.0, 8.0]]))
  with pytest.raises(ValueError, match='capacity=3'):
    tracker.add_queries(frame, np.array([[1.0, 1.0], [2.0, 2.0]]))
  assert tracker.num_points == 2 and tracker.num_slots == 3 and tracker.step(frame).tracks.shape == (2, 2)
  with pytest.raises(ValueError, match='capacity must be an integer >= 1'):
    tapir.OnlineTracker.random_init(resize_to=None, capacity=0, **TINY_CAUSAL)
  with pytest.raises(ValueError, match='max_points is needed'):
    tapir.OnlineTracker.random_init(resize_to=None, **TINY_CAUSAL).warm_up(frame)


class _Compilations(logging.Handler):
  """Counts the compilations JAX logs (`jax_log_compiles`) while it is installed."""

  def __init__(self):
    super().__init__()
    self.names = []

  def emit(self, record):
    message = record.getMessage()
    if message.startswith('Compiling '):
      self.names.append(message.split(' with ')[0])

  def __enter__(self):
    self._logging = jax.log_compiles(True)
    self._logging.__enter__()
    logging.getLogger('jax').addHandler(self)
    return self

  def __exit__(self, *exc):
    logging.getLogger('jax').removeHandler(self)
    self._logging.__exit__(*exc)


def test_adding_points_one_by_one_mid_stream_compiles_nothing_after_warm_up(rng):
  video = _uint8_video(rng, 24, 32, 32)
  tracker = tapir.OnlineTracker.random_init(resize_to=None, capacity=12, min_slots=4, **TINY_CAUSAL)
  tracker.warm_up(video[0])  # buckets of 4, 8 and 12 slots
  with _Compilations() as compiled:
    tracker.start(video[0], np.zeros((0, 2)))
    for t, frame in enumerate(video):
      if 1 <= t <= 12:
        assert tracker.add_queries(frame, rng.uniform(0, 31, (1, 2))).tolist() == [t - 1]
      if t == 14:
        tracker.remove_queries(np.arange(1, 12))  # down to the 4-slot bucket
      if t == 16:
        tracker.clear()
      if t == 18:
        tracker.add_queries(frame, rng.uniform(0, 31, (6, 2)))
      assert tracker.step(frame).tracks.shape == (tracker.num_points, 2)
  assert compiled.names == []
  assert tracker._step._cache_size() == 3  # pylint: disable=protected-access
  # Without a warm-up, the first point's step compiles the 4-slot bucket; the next three points compile nothing.
  cold = tapir.OnlineTracker(tracker.params, tracker.state, tracker.model_kwargs, resize_to=None, min_slots=4)
  cold.start(video[0], rng.uniform(0, 31, (1, 2)))
  cold.step(video[0])
  with _Compilations() as compiled:
    for frame in video[1:4]:
      cold.add_queries(frame, rng.uniform(0, 31, (1, 2)))
      cold.step(frame)
  assert compiled.names == [] and cold.num_points == 4
