"""TAP-Net: parity with the official implementation, backbone details, checkpoint errors, batch norm under pmap."""

import json
import pathlib

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tapir
from tapir.tracking import tapnet as tapnet_tracker
from tapir import checkpoint
from tapir import losses
from tapir.models import tapnet
from tapir.models import tsm_resnet

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'  # copied from ../shared/golden


@pytest.fixture(scope='module')
def checkpoint_tree():
  return tapir.load_checkpoint(FIXTURES / 'tapnet_checkpoint_small.npy')


def _apply(params, state, video, queries, chunk=None, **kwargs):
  kwargs = {'num_frames': video.shape[1], 'cross_replica_axis': None, **kwargs}
  model = hk.transform_with_state(
      lambda v, q: tapir.TAPNet(**kwargs)(v, is_training=False, query_points=q, query_chunk_size=chunk))
  out, _ = jax.jit(model.apply)(params, state, None, video, queries)
  return jax.device_get(out)


def test_parity_with_official_tapnet(checkpoint_tree, xla_optimisations):
  del xla_optimisations
  spec = json.loads((FIXTURES / 'tapnet_small.json').read_text())
  golden = np.load(FIXTURES / 'tapnet_small.npz')
  params, state = checkpoint_tree
  kwargs = {k: v for k, v in spec['tapnet_kwargs'].items()}
  model = hk.transform_with_state(lambda v, q: tapir.TAPNet(**kwargs)(v, query_points=q, **spec['call']))
  out, _ = jax.jit(model.apply)(params, state, None, golden['video'], golden['query_points'])
  assert set(out) == {'feature_grid', 'tracks', 'occlusion'}
  np.testing.assert_allclose(out['feature_grid'], golden['feature_grid'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out['occlusion'], golden['occlusion'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out['tracks'], golden['tracks'], atol=1e-3, rtol=0)
  # One chunk for all queries, and a precomputed grid, give the same numbers.
  whole = _apply(params, state, golden['video'], golden['query_points'])
  np.testing.assert_allclose(whole['tracks'], golden['tracks'], atol=1e-3, rtol=0)
  regrid = hk.transform_with_state(lambda v, q, g: tapir.TAPNet(num_frames=8, cross_replica_axis=None)(
      v, False, q, query_chunk_size=5, get_query_feats=True, feature_grid=g))
  again, _ = jax.jit(regrid.apply)(params, state, None, golden['video'], golden['query_points'],
                                   golden['feature_grid'])
  np.testing.assert_allclose(again['occlusion'], golden['occlusion'], atol=1e-4, rtol=0)
  assert again['query_feats'].shape == (1, 6, 256)


def test_non_square_video_and_other_frame_counts(checkpoint_tree):
  params, state = checkpoint_tree
  rng = np.random.default_rng(1)
  video = rng.uniform(-1, 1, (2, 5, 40, 100, 3)).astype(np.float32)
  queries = np.stack([rng.integers(0, 5, (2, 7)), rng.uniform(0, 40, (2, 7)), rng.uniform(0, 100, (2, 7))],
                     axis=-1).astype(np.float32)
  out = _apply(params, state, video, queries, chunk=3)
  assert out['feature_grid'].shape == (2, 5, 5, 13, 256)  # ceil-based grid sizes
  np.testing.assert_allclose(np.linalg.norm(out['feature_grid'], axis=-1), 1.0, atol=1e-5)
  assert out['tracks'].shape == (2, 7, 5, 2) and out['occlusion'].shape == (2, 7, 5)
  assert np.isfinite(out['tracks']).all() and np.isfinite(out['occlusion']).all()
  frame = queries[..., 0].astype(int)
  at_query = np.take_along_axis(out['tracks'], frame[..., None, None], axis=2)[:, :, 0]
  np.testing.assert_allclose(at_query, queries[..., :0:-1], atol=1e-5)  # the query's own (x, y)
  assert (out['tracks'][..., 0] <= 100).all() and (out['tracks'][..., 1] <= 40).all()
  # The heads are per-video: the second clip alone gives the same result.
  single = _apply(params, state, video[1:], queries[1:], chunk=3)
  np.testing.assert_allclose(single['tracks'][0], out['tracks'][1], atol=1e-3)
  np.testing.assert_allclose(single['occlusion'][0], out['occlusion'][1], atol=1e-4)


def test_temporal_shift_permutes_channels_between_neighbouring_frames():
  x = np.arange(2 * 3 * 16, dtype=np.float32).reshape(2 * 3, 1, 1, 16)  # 2 clips of 3 frames
  out = np.asarray(tsm_resnet.temporal_shift(x, num_frames=3, fraction=0.125)).reshape(2, 3, 16)
  v = x.reshape(2, 3, 16)
  np.testing.assert_array_equal(out[:, :2, :2], v[:, 1:, 14:])  # last 2 channels of the next frame, first
  np.testing.assert_array_equal(out[:, 1:, 14:], v[:, :2, :2])  # first 2 of the previous frame, last
  np.testing.assert_array_equal(out[:, :, 2:14], v[:, :, 2:14])
  assert (out[:, 2, :2] == 0).all() and (out[:, 0, 14:] == 0).all()  # zeros at each clip's ends, no leakage
  np.testing.assert_array_equal(tsm_resnet.temporal_shift(x, 3, 0.0), x)


@pytest.mark.parametrize('stride, cells', [(4, (10, 25)), (8, (5, 13)), (16, (3, 7)), (32, (3, 7))])
def test_feature_grid_stride(stride, cells):
  model = hk.transform_with_state(lambda v: tapir.TAPNet(feature_grid_stride=stride, cross_replica_axis=None)(
      v, True, np.zeros((1, 1, 3), np.float32), compute_regression=False)['feature_grid'])
  run = lambda v: model.apply(*model.init(jax.random.PRNGKey(0), v), None, v)[0]
  out = jax.eval_shape(run, jax.ShapeDtypeStruct((1, 2, 40, 100, 3), np.float32))
  assert out.shape == (1, 2) + cells + (256,)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='feature_grid_stride'):
    hk.transform(lambda: tapir.TAPNet(feature_grid_stride=2)).init(None)
  with pytest.raises(ValueError, match='num_heads'):
    hk.transform(lambda: tapir.TAPNet(num_heads=3)).init(None)
  with pytest.raises(ValueError, match='video'):
    hk.transform_with_state(lambda v: tapir.TAPNet(cross_replica_axis=None)(
        v, False, np.zeros((1, 1, 3), np.float32))).init(None, np.zeros((4, 16, 16, 3), np.float32))


def test_checkpoint_mismatch_lists_missing_unexpected_and_misshaped(checkpoint_tree):
  params, state = checkpoint_tree
  checkpoint.check_params(params, {}, state, family='tapnet')  # the released layout fits the default constructor
  params = {k: dict(v) for k, v in params.items()}
  del params['tap_net/~/occlusion_out']
  params['tap_net/~/extra'] = {'w': np.zeros(3)}
  params['tap_net/~/cost_volume_regression_1'] = {'w': np.zeros((1, 3, 3, 2, 16)), 'b': np.zeros(16)}
  with pytest.raises(ValueError) as error:
    checkpoint.check_params(params, {}, state, family='tapnet')
  message = str(error.value)
  assert 'missing: tap_net/~/occlusion_out/b, tap_net/~/occlusion_out/w' in message
  assert 'unexpected: tap_net/~/extra/w' in message
  assert 'cost_volume_regression_1/w (1, 3, 3, 2, 16) (model wants (1, 3, 3, 1, 16))' in message
  with pytest.raises(ValueError, match='state missing'):
    checkpoint.check_params(checkpoint_tree[0], {}, {}, family='tapnet')
  with pytest.raises(ValueError, match=r'TAPNet\(num_heads=2\)\n  params mis-shaped: .*cost_volume_regression_1/w'):
    checkpoint.check_params(checkpoint_tree[0], dict(num_heads=2), state, family='tapnet')
  n = sum(np.size(a) for leaves in checkpoint_tree[0].values() for a in leaves.values())
  assert n == 2_791_090


def test_cross_replica_batchnorm_uses_global_batch_statistics(golden_dir):
  """Two replicas (faked in this process by `chex.fake_pmap`, the same named-axis collectives) normalise like one
  replica that sees the whole batch."""
  params, state = tapir.load_checkpoint(golden_dir / 'tapnet_checkpoint_small.npy')
  rng = np.random.default_rng(0)
  video = rng.uniform(-1, 1, size=(4, 3, 32, 48, 3)).astype(np.float32)
  queries = np.stack([np.zeros((4, 5)), rng.uniform(0, 32, (4, 5)), rng.uniform(0, 48, (4, 5))], -1)
  queries = queries.astype(np.float32)

  def forward(axis):
    def fn(v, q):
      out = tapir.TAPNet(cross_replica_axis=axis)(v, True, q, query_chunk_size=4)
      return out['feature_grid'], out['occlusion']
    return lambda p, s, v, q: hk.transform_with_state(fn).apply(p, s, None, v, q)

  replicate = lambda tree, n: jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), tree)
  split = lambda x: x.reshape((2, 2) + x.shape[1:])
  with chex.fake_pmap():
    (f2, o2), s2 = jax.pmap(forward('i'), axis_name='i')(replicate(params, 2), replicate(state, 2), split(video),
                                                         split(queries))
    (f1, o1), s1 = jax.pmap(forward('i'), axis_name='i')(replicate(params, 1), replicate(state, 1), video[None],
                                                         queries[None])
    (f_local, _), _ = jax.pmap(forward(None), axis_name='i')(replicate(params, 2), replicate(state, 2),
                                                             split(video), split(queries))
  np.testing.assert_allclose(np.asarray(f2).reshape(f1.shape), f1, atol=2e-5)
  np.testing.assert_allclose(np.asarray(o2).reshape(o1.shape), o1, atol=1e-4)
  first = lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree)
  chex.assert_trees_all_close(first(s2, 0), first(s2, 1), atol=1e-6)  # the replicas agree
  chex.assert_trees_all_close(first(s2, 0), first(s1, 0), atol=1e-5)  # on the global batch's EMA update
  # Per-replica statistics would differ: the halves of the batch are different videos.
  assert np.abs(np.asarray(f_local).reshape(f1.shape) - f1).max() > 1e-3


def test_reference_recipe_config():
  from configs import tapnet as tapnet_configs  # pylint: disable=g-import-not-at-top
  from tapir.training import state as training  # pylint: disable=g-import-not-at-top
  config = tapnet_configs.get_config()
  assert config.task == 'tapnet' and config.model.to_dict() == dict(
      feature_grid_stride=8, num_heads=1, cross_replica_axis='i', num_frames=24)
  schedule = training.learning_rate_schedule(config.optimizer)
  assert config.optimizer.training_steps == 100_000
  np.testing.assert_allclose([schedule(2500), schedule(5000), schedule(52_500), schedule(100_000)],
                             [1e-3, 2e-3, 1e-3, 0.0], atol=1e-9)
  assert (config.optimizer.weight_decay, config.optimizer.adam_b2, config.loss.position_loss_weight) == (
      1e-2, 0.95, 0.05)
  with pytest.raises(ValueError, match='preset'):
    tapnet_configs.get_config('nope')


def test_loss_is_the_single_reference_term():
  rng = np.random.default_rng(0)
  tracks = rng.uniform(0, 64, (1, 3, 4, 2)).astype(np.float32)
  target = tracks + rng.normal(0, 6, tracks.shape).astype(np.float32)  # some errors beyond the Huber delta
  occ_logit = rng.normal(size=(1, 3, 4)).astype(np.float32)
  occluded = rng.uniform(size=(1, 3, 4)) < 0.3
  terms = losses.tapnet_loss_terms({'tracks': tracks, 'occlusion': occ_logit}, target, occluded,
                                   (1, 4, 64, 64, 3))
  err = np.linalg.norm((tracks - target) * 4, axis=-1)  # 64 -> 256 raster
  huber = np.where(err < 4, err**2 / 2, 4 * (err - 2)) * ~occluded
  p = 1 / (1 + np.exp(-occ_logit.astype(np.float64)))
  bce = -(occluded * np.log(p) + ~occluded * np.log(1 - p))
  np.testing.assert_allclose(terms.total, 0.05 * huber.mean() + bce.mean(), rtol=1e-5)
  assert terms.position.shape == (1,) and float(terms.uncertainty[0]) == 0.0


def test_two_step_training_smoke(tmp_path):
  """The shared runner trains TAP-Net (tiny preset) for two steps, evaluates, and exports loadable weights."""
  from configs import tapnet as tapnet_configs  # pylint: disable=g-import-not-at-top
  from tapir.training import loop as trainer  # pylint: disable=g-import-not-at-top
  config = tapnet_configs.get_config('tiny')
  result = trainer.train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 2 and np.isfinite(result['metrics']['loss'])
  assert result['metrics']['uncertainty_loss'] == 0.0
  assert 0.0 <= result['eval']['average_jaccard'] <= 1.0 and 'baseline_average_jaccard' in result['eval']
  assert result['exported'].endswith('tapnet_checkpoint.npz')
  contents = checkpoint.read_checkpoint(result['exported'])
  params, state = contents.params, contents.state
  assert contents.family == 'tapnet' and contents.model_kwargs == dict(config.model)
  checkpoint.check_params(params, contents.model_kwargs, state, family='tapnet')
  counters = [v['counter'] for k, v in state.items() if k.endswith('mean_ema')]
  assert len(counters) == 12 and all(int(c) == 2 for c in counters)  # one EMA update per training step
  tracker = tapnet_tracker.TAPNetTracker(params, state, resolution=(32, 32))
  video = np.random.default_rng(0).integers(0, 255, (3, 40, 24, 3), dtype=np.uint8)
  tracks, visible = tracker.track(video, np.array([[0, 10.5, 5.5], [2, 39.0, 23.0]], np.float32))
  assert tracks.shape == (2, 3, 2) and visible.shape == (2, 3)
  np.testing.assert_allclose(tracks[0, 0], [5.5, 10.5], atol=1e-4)  # the query itself at its frame


def test_tracker_matches_the_model_and_maps_back_to_video_pixels(checkpoint_tree):
  params, state = checkpoint_tree
  golden = np.load(FIXTURES / 'tapnet_small.npz')
  video = np.round((golden['video'][0] + 1) / 2 * 255).astype(np.uint8)  # [8, 64, 64, 3]
  queries = golden['query_points'][0]
  direct = _apply(params, state, (video[None] / 255 * 2 - 1).astype(np.float32), queries[None], chunk=4)
  tracker = tapnet_tracker.TAPNetTracker(params, state, query_chunk_size=4, resolution=(64, 64))
  out = tracker.predict(video, queries)  # 6 queries in padded chunks of 4
  np.testing.assert_allclose(out.tracks, direct['tracks'][0], atol=1e-3)
  np.testing.assert_allclose(out.occlusion, direct['occlusion'][0], atol=1e-4)
  np.testing.assert_array_equal(out.visible, direct['occlusion'][0] <= 0)
  # Run at twice the size, tracks come back in the video's pixels: the query frames return the queries.
  big = tracker.predict(video, queries, resize_to=(128, 128))
  frame = queries[:, 0].astype(int)
  np.testing.assert_allclose(big.tracks[np.arange(6), frame], queries[:, :0:-1], atol=1e-4)
  with pytest.raises(ValueError, match='outside the video'):
    tracker.predict(video, np.array([[0, 70.0, 3.0]], np.float32))
