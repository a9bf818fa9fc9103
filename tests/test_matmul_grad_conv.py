"""`tapir.models.matmul_grad_conv`: hk.Conv2D's parameters and forward bit for bit, XLA's gradients up to float
summation order, used inside the query-chunk scan only, and no convolution left there in the backward pass of
the cost-volume head."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tapir
from tapir.models import cost_volume
from tapir.models import matmul_grad_conv

SHAPES = [  # batch, height, width, c_in, c_out, stride: the head's three, and odd sizes and strides
    (5, 32, 32, 1, 16, 1), (5, 32, 32, 16, 1, 1), (5, 32, 32, 16, 32, 2), (3, 7, 9, 3, 4, 2), (2, 9, 6, 2, 3, 3),
    (2, 1, 1, 2, 2, 1),
]
TINY = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=(64, 64),
            pyramid_level=0)


def _plain_conv(output_channels, kernel_shape, stride=1, name=None):
  return hk.Conv2D(output_channels, kernel_shape, stride=stride, padding='SAME', name=name)


@pytest.mark.parametrize('shape', SHAPES)
def test_same_parameters_same_forward_same_gradients(shape):
  b, h, w, c_in, c_out, stride = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, h, w, c_in)).astype(np.float32))
  theirs = hk.transform(lambda v: _plain_conv(c_out, 3, stride, name='conv')(v))
  ours = hk.transform(lambda v: matmul_grad_conv.MatmulGradConv2D(c_out, 3, stride=stride, name='conv')(v))
  params = theirs.init(jax.random.PRNGKey(1), x)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, params, ours.init(jax.random.PRNGKey(1), x)))
  out = theirs.apply(params, None, x)
  cotangent = jnp.asarray(rng.standard_normal(out.shape).astype(np.float32))
  with matmul_grad_conv.in_loop_body():
    assert matmul_grad_conv.matmul_gradients()  # the suite runs on CPU
    assert np.array_equal(out, ours.apply(params, None, x))  # the same XLA convolution
    got = jax.grad(lambda p, v: jnp.sum(ours.apply(p, None, v) * cotangent), argnums=(0, 1))(params, x)
  expected = jax.grad(lambda p, v: jnp.sum(theirs.apply(p, None, v) * cotangent), argnums=(0, 1))(params, x)
  for name, e, g in [('w', expected[0]['conv']['w'], got[0]['conv']['w']),
                     ('b', expected[0]['conv']['b'], got[0]['conv']['b']), ('x', expected[1], got[1])]:
    np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * float(np.abs(e).max()), err_msg=name)


def test_the_head_backward_pass_has_no_convolution_inside_loops_only():
  head = hk.transform(lambda q, g: cost_volume.CostVolumeHead(20.0)(q, g, (64, 64)))
  rng = np.random.default_rng(0)
  queries = jnp.asarray(rng.standard_normal((1, 3, 8)).astype(np.float32))
  grid = jnp.asarray(rng.standard_normal((1, 2, 8, 8, 8)).astype(np.float32))
  params = head.init(jax.random.PRNGKey(0), queries, grid)
  loss = lambda p, q, g: sum(jnp.sum(v) for v in head.apply(p, None, q, g))
  grad = lambda: jax.grad(lambda *a: loss(*a), argnums=(0, 1, 2))  # a new function: traced afresh
  count = lambda f: jax.jit(f).lower(params, queries, grid).as_text().count('stablehlo.convolution')
  assert count(loss) == 3  # the head's three convolutions
  assert count(grad()) == 9  # outside a loop: XLA's own gradients (two more convolutions each)
  with matmul_grad_conv.in_loop_body():
    assert count(grad()) == 3  # the same three, and none for the gradients
  assert not matmul_grad_conv.matmul_gradients()  # the context is left


def test_training_gradients_through_the_chunk_scan_match_xla(monkeypatch):
  """Four chunks of queries: the first outside the scan, three inside it (where the matrix products apply)."""
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.uniform(-1, 1, (1, 2, 64, 64, 3)).astype(np.float32))
  queries = jnp.asarray(np.stack([rng.integers(0, 2, (1, 16)), rng.uniform(0, 64, (1, 16)),
                                  rng.uniform(0, 64, (1, 16))], -1).astype(np.float32))
  kwargs = dict(TINY, cross_replica_axis=None)

  def gradients():
    model = hk.transform_with_state(lambda v, q: tapir.TAPIR(**kwargs)(v, True, q, query_chunk_size=4))
    params, state = model.init(jax.random.PRNGKey(0), video, queries)
    loss = lambda p: sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(
        model.apply(p, state, jax.random.PRNGKey(1), video, queries)[0]))
    return jax.jit(jax.grad(loss))(params)

  ours = gradients()
  monkeypatch.setattr(cost_volume, 'MatmulGradConv2D', _plain_conv)
  theirs = gradients()
  scale = max(float(np.abs(e).max()) for e in jax.tree_util.tree_leaves(theirs))
  for (path, e), g in zip(jax.tree_util.tree_leaves_with_path(theirs), jax.tree_util.tree_leaves(ours)):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6 * scale, err_msg=str(path))


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match=r'\[batch, height, width, channels\]'):
    hk.transform(lambda x: matmul_grad_conv.MatmulGradConv2D(4, 3)(x)).init(None, jnp.zeros((8, 8, 2)))
