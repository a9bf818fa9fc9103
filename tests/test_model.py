"""Shapes, invariances and input errors of the composed model (small random configs)."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tapir
from tapir.models import tapir as tapir_lib
from tests.conftest import SMALL_KWARGS

TINY = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=(32, 32),
            pyramid_level=0, num_pips_iter=2)


def _run(kwargs, video, queries, params=None, rng_seed=0, **call):
  def forward(video, queries):
    return tapir.TAPIR(**kwargs)(video, is_training=False, query_points=queries, **call)
  model = hk.transform_with_state(forward)
  if params is None:
    params, state = jax.jit(model.init)(jax.random.PRNGKey(rng_seed), video, queries)
  else:
    params, state = params
  out, _ = jax.jit(model.apply)(params, state, jax.random.PRNGKey(1), video, queries)
  return out, (params, state)


def _inputs(rng, b=1, t=4, h=32, w=32, n=5):
  video = rng.uniform(-1, 1, size=(b, t, h, w, 3)).astype(np.float32)
  queries = np.stack([rng.integers(0, t, size=(b, n)), rng.uniform(0, h, size=(b, n)),
                      rng.uniform(0, w, size=(b, n))], -1).astype(np.float32)
  return video, queries


def test_output_shapes_and_lists(rng):
  video, queries = _inputs(rng, b=2, t=3, n=4)
  out, _ = _run(TINY, video, queries)
  assert out['tracks'].shape == (2, 4, 3, 2)
  assert out['occlusion'].shape == out['expected_dist'].shape == (2, 4, 3)
  assert len(out['unrefined_tracks']) == TINY['num_pips_iter']  # init + all but the last iteration
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(out))


def test_query_frame_carries_the_query_point_in_the_initialisation(rng):
  video, queries = _inputs(rng, h=40, w=48)  # not the initial resolution: replacement happens after rescaling
  out, _ = _run(TINY, video, queries)
  init = np.asarray(out['unrefined_tracks'][0])
  for i, (t, y, x) in enumerate(queries[0]):
    np.testing.assert_allclose(init[0, i, int(t)], [x, y], atol=1e-4)


def test_chunk_size_and_permutation_do_not_change_values(rng):
  video, queries = _inputs(rng, n=7)
  whole, params = _run(TINY, video, queries)
  for chunk in (1, 3):
    chunked, _ = _run(TINY, video, queries, params=params, query_chunk_size=chunk)
    for key in ('tracks', 'occlusion', 'expected_dist'):
      np.testing.assert_allclose(chunked[key], whole[key], atol=1e-4, err_msg=f'{key}, chunk {chunk}')


def test_frame_chunked_feature_extraction_is_exact(rng):
  video, queries = _inputs(rng, t=5)
  whole, params = _run(TINY, video, queries)
  chunked, _ = _run({**TINY, 'feature_extractor_chunk_size': 2}, video, queries, params=params)
  np.testing.assert_allclose(chunked['tracks'], whole['tracks'], atol=1e-4)
  np.testing.assert_allclose(chunked['occlusion'], whole['occlusion'], atol=1e-5)


@pytest.mark.parametrize('pyramid_level', [0, 1])
def test_dense_patch_path_equals_gather_path(rng, pyramid_level):
  video, queries = _inputs(rng, h=48, w=40)  # two refinement levels
  kwargs = {**TINY, 'pyramid_level': pyramid_level}
  gather, params = _run(kwargs, video, queries)
  dense, _ = _run({**kwargs, 'bilinear_interp_with_depthwise_conv': True}, video, queries, params=params)
  for key in ('tracks', 'occlusion', 'expected_dist'):
    np.testing.assert_allclose(dense[key], gather[key], atol=1e-4, err_msg=key)


def test_default_resolutions():
  assert tapir_lib.generate_default_resolutions((256, 256), (256, 256)) == [(256, 256)]
  assert tapir_lib.generate_default_resolutions((96, 128), (64, 64)) == [(64, 64), (96, 128)]
  assert tapir_lib.generate_default_resolutions((48, 48), (64, 64)) == [(64, 64)]
  assert tapir_lib.generate_default_resolutions((1080, 1920), (256, 256))[-1] == (1080, 1920)


def test_parameter_counts_of_released_architectures():
  count = lambda kw: sum(int(np.prod(s)) for m in tapir.checkpoint.expected_shapes(kw).values() for s in m.values())
  assert count(dict(pyramid_level=0)) == 31_072_327  # TAPIR
  assert count(dict(pyramid_level=1, extra_convs=True)) == 54_699_335  # BootsTAPIR
  assert count(SMALL_KWARGS) == 2_871_879  # the golden checkpoint


@pytest.mark.parametrize('video_shape, message', [
    ((4, 32, 32, 3), r'\[batch, frames, height, width, 3\]'),
    ((1, 4, 32, 32, 1), r'\[batch, frames, height, width, 3\]'),
])
def test_bad_video_raises(video_shape, message):
  with pytest.raises(ValueError, match=message):
    _run(TINY, np.zeros(video_shape, np.float32), np.zeros((1, 1, 3), np.float32))


def test_bad_query_shape_raises(rng):
  video, _ = _inputs(rng)
  with pytest.raises(ValueError, match=r'query_points must be \[batch=1, num_points, 3\]'):
    _run(TINY, video, np.zeros((1, 2, 2), np.float32))


@pytest.mark.parametrize('kwargs, call', [
    ({'initial_resolution': (30, 32)}, {}),
    ({}, {'refinement_resolutions': [(36, 40)]}),
])
def test_resolution_not_multiple_of_8_raises(rng, kwargs, call):
  video, queries = _inputs(rng)
  with pytest.raises(ValueError, match='multiples of 8'):
    _run({**TINY, **kwargs}, video, queries, **call)


def test_query_points_outside_video_raise():
  with pytest.raises(ValueError, match=r'1 query point\(s\) lie outside the video'):
    tapir_lib.check_query_points(np.array([[0, 5, 5], [4, 5, 5]], np.float32), (4, 32, 32, 3))
  tapir_lib.check_query_points(np.array([[3, 32, 0]], np.float32), (4, 32, 32, 3))  # edges are inside


def test_unsupported_arguments_raise(rng):
  video, queries = _inputs(rng)
  with pytest.raises(ValueError, match='patch_size'):
    _run({**TINY, 'patch_size': 5}, video, queries)
  with pytest.raises(ValueError, match='get_query_feats'):
    _run(TINY, video, queries, get_query_feats=True)
  with pytest.raises(ValueError, match='normalization'):
    _run({**TINY, 'normalization': 'groupnorm'}, video, queries)


def _training_gradient(kwargs, video, queries, chunk, loss_of_outputs, params=None):
  """(params and state, jitted gradient of loss_of_outputs(outputs) w.r.t. the params) of an is_training
  forward with rng=None (queries in their own order, so the first chunk is the first `chunk` queries)."""
  model = hk.transform_with_state(
      lambda v, q: tapir.TAPIR(**kwargs)(v, is_training=True, query_points=q, query_chunk_size=chunk))
  if params is None:
    params = model.init(jax.random.PRNGKey(0), video, queries)
  grad = jax.jit(jax.grad(lambda p: loss_of_outputs(model.apply(p, params[1], None, video, queries)[0])))
  return params, grad


def test_training_chunks_after_the_first_get_no_refinement_gradient(rng):
  kwargs = {**TINY, 'bilinear_interp_with_depthwise_conv': True}
  video, queries = _inputs(rng, n=6)
  params, _ = _training_gradient(kwargs, video, queries, 2, lambda out: 0.0)

  def gradient(loss, params):  # chunks of 2: queries 0-1 are the first chunk, 2-5 the later ones
    return _training_gradient(kwargs, video, queries, 2, loss, params)[1](params[0])

  total = lambda g, part: sum(float(jnp.abs(v).sum()) for m, leaves in g.items() if part in m
                              for v in leaves.values())
  later = gradient(lambda out: jnp.sum(out['tracks'][:, 2:]), params)
  first = gradient(lambda out: jnp.sum(out['tracks'][:, :2]), params)
  assert total(later, 'pips_mlp_mixer') == 0  # refinement of chunks 2 and 3: no gradient at all
  assert total(first, 'pips_mlp_mixer') > 0
  init = gradient(lambda out: jnp.sum(out['unrefined_occlusion'][0][:, 2:]), params)
  assert total(init, 'cost_volume') > 0 and total(init, 'resnet') > 0  # every chunk's initialisation is trained


def test_training_chunked_values_equal_unchunked(rng):
  video, queries = _inputs(rng, n=7)
  def run(chunk):
    model = hk.transform_with_state(
        lambda v, q: tapir.TAPIR(**TINY)(v, is_training=True, query_points=q, query_chunk_size=chunk))
    params = model.init(jax.random.PRNGKey(0), video, queries)
    return jax.jit(model.apply)(*params, jax.random.PRNGKey(1), video, queries)[0]
  whole, chunked = run(None), run(3)
  for key in ('tracks', 'occlusion', 'expected_dist'):
    np.testing.assert_allclose(chunked[key], whole[key], atol=1e-4, err_msg=key)


def test_training_gradient_memory_grows_with_the_chunk_not_the_number_of_queries():
  """Compiled temporaries of the training gradient: 4 chunks ~ 1 chunk of the same size; a 2x chunk costs more."""
  kwargs = dict(TINY, num_mixer_blocks=2, mixer_hidden_dim=64, bilinear_interp_with_depthwise_conv=True)

  def temporaries(num_points, chunk):
    video, queries = _inputs(np.random.default_rng(0), t=8, n=num_points)
    params, grad = _training_gradient(kwargs, video, queries, chunk, lambda out: sum(
        jnp.sum(x) for x in jax.tree_util.tree_leaves(out)))
    return grad.lower(params[0]).compile().memory_analysis().temp_size_in_bytes

  one_chunk, four_chunks, double_chunk = temporaries(16, 16), temporaries(64, 16), temporaries(32, 32)
  assert four_chunks < 1.3 * one_chunk, (one_chunk, four_chunks)
  assert double_chunk > 1.3 * one_chunk, (one_chunk, double_chunk)


@pytest.mark.parametrize('causal', [False, True])
def test_temporal_depthwise_conv_in_split_layout_is_the_depthwise_convolution(rng, causal):
  """The mixer's temporal convs (channels held as [..., group, c]) equal a plain depthwise 1-D convolution."""
  from tapir.models import refinement  # pylint: disable=g-import-not-at-top
  p, t, c, m = 3, 6, 8, refinement.EXPANSION
  x = rng.normal(size=(p, t, c)).astype(np.float32)

  def depthwise(x, w, b):  # x [p, t, C], w [k, 1, C * mult]: output channel C_i * mult + j reads input C_i
    pad = (2, 0) if causal else (1, 1)
    return jax.lax.conv_general_dilated(x, w, (1,), [pad], dimension_numbers=('NWC', 'WIO', 'NWC'),
                                        feature_group_count=x.shape[-1]) + b

  def forward(x):
    up = refinement.TemporalDepthwiseConv(m, causal, name='up')
    mix = refinement.TemporalDepthwiseConv(1, causal, name='mix')
    return up(x[:, :, None]), mix(up(x[:, :, None]))

  model = hk.transform(forward)
  params = model.init(jax.random.PRNGKey(0), x)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
  up_split, mix_split = model.apply(params, None, x)
  merge = lambda y: np.asarray(jnp.swapaxes(y, -1, -2).reshape(p, t, c * m))  # [p, t, m, c] -> channel c * m + j
  up_ref = depthwise(x, params['up']['w'], params['up']['b'])
  np.testing.assert_allclose(merge(up_split), up_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(merge(mix_split), depthwise(up_ref, params['mix']['w'], params['mix']['b']),
                             rtol=1e-5, atol=1e-5)
