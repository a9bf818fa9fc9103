"""Cross-replica batch norm: under pmap on several devices it normalises with global-batch statistics."""

import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO

_SCRIPT = textwrap.dedent('''
    import haiku as hk, jax, jax.numpy as jnp, numpy as np
    import tapir
    assert jax.local_device_count() == 2, jax.devices()
    kwargs = dict(blocks_per_group=(1, 1, 1, 1), normalization='batchnorm', initial_resolution=(32, 32))

    def features(video):
      grids = tapir.TAPIR(**kwargs).get_feature_grids(video, is_training=True)
      return grids.hires[0], grids.lowres[0]

    model = hk.transform_with_state(features)
    video = np.random.default_rng(0).uniform(-1, 1, size=(4, 2, 32, 32, 3)).astype(np.float32)
    # Initialise outside pmap (no axis to average over); the parameters are the same.
    init = hk.transform_with_state(lambda v: tapir.TAPIR(**{**kwargs, 'cross_replica_axis': None})
                                   .get_feature_grids(v, is_training=True).hires[0]).init
    params, state = jax.jit(init)(jax.random.PRNGKey(0), video)
    apply = lambda p, s, v: model.apply(p, s, None, v)
    replicate = lambda tree, n: jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), tree)

    # Two devices, two videos each.
    two = jax.pmap(apply, axis_name='i')
    (hi2, lo2), state2 = two(replicate(params, 2), replicate(state, 2), video.reshape(2, 2, *video.shape[1:]))
    # One device seeing the whole global batch.
    one = jax.pmap(apply, axis_name='i', devices=jax.devices()[:1])
    (hi1, lo1), state1 = one(replicate(params, 1), replicate(state, 1), video[None])

    np.testing.assert_allclose(np.asarray(hi2).reshape(hi1.shape), hi1, atol=2e-5)
    np.testing.assert_allclose(np.asarray(lo2).reshape(lo1.shape), lo1, atol=2e-5)
    for a, b in zip(jax.tree_util.tree_leaves(state2), jax.tree_util.tree_leaves(state1)):
      np.testing.assert_allclose(a[0], a[1], atol=1e-6)  # replicas agree
      np.testing.assert_allclose(a[0], b[0], atol=1e-5)  # and equal the global-batch statistics
    # Local statistics would differ: the two halves of the batch are different videos.
    local = jax.pmap(lambda p, s, v: hk.transform_with_state(
        lambda v: tapir.TAPIR(**{**kwargs, 'cross_replica_axis': None}).get_feature_grids(
            v, is_training=True).hires[0]).apply(p, s, None, v), axis_name='i')
    hi_local, _ = local(replicate(params, 2), replicate(state, 2), video.reshape(2, 2, *video.shape[1:]))
    assert np.abs(np.asarray(hi_local).reshape(hi1.shape) - hi1).max() > 1e-3
    # Inference uses the EMA statistics stored in state (no pmap needed).
    (hi_eval, _), _ = jax.jit(hk.transform_with_state(
        lambda v: (lambda g: (g.hires[0], g.lowres[0]))(tapir.TAPIR(**kwargs).get_feature_grids(
            v, is_training=False))).apply)(params, jax.tree_util.tree_map(lambda x: x[0], state1), None, video)
    assert np.isfinite(np.asarray(hi_eval)).all()
    print('OK')
''')


def test_cross_replica_batchnorm_uses_global_batch_statistics():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu',
             PYTHONPATH=str(REPO))
  result = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-4000:]
