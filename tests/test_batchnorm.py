"""Cross-replica batch norm: under pmap over several replicas it normalises with global-batch statistics.

The replicas are faked in this process (`chex.fake_pmap`: pmap becomes a vmap over the same named axis, so the
cross-replica means are the same collectives); the real multi-device pmap runs in tests/test_training.py.
"""

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

import tapir

KWARGS = dict(blocks_per_group=(1, 1, 1, 1), normalization='batchnorm', initial_resolution=(32, 32))


def _features(kwargs, is_training):
  def features(video):
    grids = tapir.TAPIR(**kwargs).get_feature_grids(video, is_training=is_training)
    return grids.hires[0], grids.lowres[0]
  return hk.transform_with_state(features)


def _replicate(tree, n):
  return jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), tree)


def test_cross_replica_batchnorm_uses_global_batch_statistics():
  video = np.random.default_rng(0).uniform(-1, 1, size=(4, 2, 32, 32, 3)).astype(np.float32)
  local_kwargs = {**KWARGS, 'cross_replica_axis': None}
  # Initialise outside pmap (no axis to average over); the parameters are the same.
  params, state = jax.jit(_features(local_kwargs, True).init)(jax.random.PRNGKey(0), video)
  apply = lambda p, s, v: _features(KWARGS, True).apply(p, s, None, v)
  apply_local = lambda p, s, v: _features(local_kwargs, True).apply(p, s, None, v)
  halves = video.reshape(2, 2, *video.shape[1:])
  with chex.fake_pmap():
    (hi2, lo2), state2 = jax.pmap(apply, axis_name='i')(_replicate(params, 2), _replicate(state, 2), halves)
    (hi1, lo1), state1 = jax.pmap(apply, axis_name='i')(_replicate(params, 1), _replicate(state, 1), video[None])
    (hi_local, _), _ = jax.pmap(apply_local, axis_name='i')(_replicate(params, 2), _replicate(state, 2), halves)

  # Two replicas of two videos each normalise like one replica that sees all four.
  np.testing.assert_allclose(np.asarray(hi2).reshape(hi1.shape), hi1, atol=2e-5)
  np.testing.assert_allclose(np.asarray(lo2).reshape(lo1.shape), lo1, atol=2e-5)
  first = lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree)
  chex.assert_trees_all_close(first(state2, 0), first(state2, 1), atol=1e-6)  # the replicas agree
  chex.assert_trees_all_close(first(state2, 0), first(state1, 0), atol=1e-5)  # on the global-batch statistics
  # Local statistics would differ: the two halves of the batch are different videos.
  assert np.abs(np.asarray(hi_local).reshape(hi1.shape) - hi1).max() > 1e-3
  # Inference uses the EMA statistics stored in state (no pmap needed).
  (hi_eval, _), _ = jax.jit(_features(KWARGS, False).apply)(params, first(state1, 0), None, video)
  assert np.isfinite(np.asarray(hi_eval)).all()
