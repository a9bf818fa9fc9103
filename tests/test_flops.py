"""FLOP accounting (scripts/flops.py, the benchmark's GFLOP columns): loops counted once per trip, XLA's rules.

XLA's `cost_analysis()` counts a loop body once; `flops.count` counts it once per trip. The reference is XLA's own
count of the same computation with every scan unrolled (`flops.unrolled`): on single primitives, on a scan of k
trips, and on a tiny TAPIR whose query chunks and refinement iterations are scans (forward and gradient), where
the loops hold most of the work, so dropping the per-trip factor fails. The benchmark's tiny case reports the
columns. Nothing here is timed against a threshold.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tapir
from scripts import benchmark
from scripts import flops

# Small backbone, wide enough mixer: the refinement loops dominate.
MODEL = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=2, mixer_hidden_dim=128, initial_resolution=(32, 32),
             pyramid_level=0, cross_replica_axis=None)


def _inputs(frames=2, size=32, points=64):
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.uniform(-1, 1, (1, frames, size, size, 3)).astype(np.float32))
  queries = np.stack([rng.integers(0, frames, (1, points)), rng.uniform(0, size, (1, points)),
                      rng.uniform(0, size, (1, points))], -1).astype(np.float32)
  return video, jnp.asarray(queries)


def test_a_scan_counts_its_body_once_per_trip():
  n, trips = 32, 5
  matmuls = lambda c, xs: jax.lax.scan(lambda c, x: (jnp.tanh(c @ x), None), c, xs)[0]
  c, xs = jnp.ones((n, n)), jnp.ones((trips, n, n))
  cost = flops.count(matmuls, c, xs)
  assert cost.dot == trips * 2 * n**3 and cost.transcendentals == trips * n * n
  assert flops.xla_cost(matmuls, c, xs)['flops'] == pytest.approx(2 * n**3, rel=0.01)  # XLA: the body once
  assert flops.xla_cost(matmuls, c, xs, unroll=True)['flops'] == pytest.approx(cost.flops, rel=1e-6)
  nested = lambda c, xs: jax.lax.scan(lambda c, x: (matmuls(c, xs), None), c, None, length=3)[0]
  assert flops.count(nested, c, xs).dot == 3 * trips * 2 * n**3
  assert flops.count(jax.pmap(matmuls), c[None], xs[None]).dot == trips * 2 * n**3  # once per device (here 1)


@pytest.mark.parametrize('name,fn,shapes', [
    ('strided padded conv', lambda x, w: jax.lax.conv_general_dilated(
        x, w, (2, 2), ((3, 2), (1, 3)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')), [(2, 17, 16, 5), (7, 5, 5, 8)]),
    ('transposed conv (lhs dilation)', lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2), rhs_dilation=(1, 2),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')), [(1, 9, 9, 4), (3, 3, 4, 6)]),
    ('grouped conv', lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', feature_group_count=4, dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
     [(2, 8, 8, 8), (3, 3, 2, 12)]),
    ('batched dot, elementwise, reduction', lambda a, b: jnp.sum(jax.nn.gelu(jnp.einsum('bij,bjk->bik', a, b)) ** 3,
                                                                  axis=1), [(3, 7, 11), (3, 11, 5)]),
])
def test_primitives_follow_xla_rules(name, fn, shapes):
  args = [jnp.ones(s) for s in shapes]
  cost, xla = flops.count(fn, *args), flops.xla_cost(fn, *args)
  assert cost.flops == pytest.approx(xla['flops'], rel=0.02), name
  assert cost.transcendentals == pytest.approx(xla['transcendentals'], rel=0.02), name


@pytest.mark.parametrize('gradient', [False, True])
def test_tiny_tapir_counts_every_chunk_and_iteration(gradient):
  """4 query chunks x 4 refinement iterations (inference: two nested scans; gradient: the first chunk alone, the
  other three in a scan): the per-trip count is XLA's count of the unrolled computation."""
  video, queries = _inputs()
  model = hk.transform_with_state(lambda v, q: tapir.TAPIR(**MODEL)(v, gradient, q, query_chunk_size=16))
  params, state = model.init(jax.random.PRNGKey(0), video, queries)
  forward = lambda p: model.apply(p, state, None, video, queries)[0]
  total = lambda p: sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(forward(p)))
  fn = jax.value_and_grad(total) if gradient else forward  # the value too: no dead code for XLA to drop
  cost = flops.count(fn, params)
  assert not cost.uncounted
  rolled, unrolled = flops.xla_cost(fn, params), flops.xla_cost(fn, params, unroll=True)
  assert cost.flops == pytest.approx(unrolled['flops'], rel=0.02)
  # What XLA's own count misses: in the forward, 15 of the 16 passes through the mixer; in the gradient (whose
  # model unrolls the iterations and runs the first chunk on its own), the forward of 2 of the 3 other chunks.
  assert cost.flops > (1.15 if gradient else 2.5) * rolled['flops']


def test_bound_reads_the_numbers():
  peaks = dict(matmul_gflops=100.0, conv_gflops=50.0, copy_gbs=10.0)
  cost = lambda conv=0.0, dot=0.0, nbytes=0.0: flops.Cost(conv, dot, 0.0, 0.0, nbytes, ())
  assert flops.bound(cost(conv=40e9, dot=40e9), 1.5, peaks).startswith('compute (compute 80%')  # 0.8 s + 0.4 s
  assert flops.bound(cost(dot=1e9, nbytes=9e9), 1.0, peaks).startswith('memory traffic (compute 1%, traffic 90%')
  assert flops.bound(cost(dot=1e9), 1.0, peaks, device_seconds=0.2).startswith('Python/dispatch')
  assert flops.bound(cost(dot=10e9), 1.0, peaks).startswith('other XLA work (compute 10%')
  row = flops.account(cost(dot=10e9), 2.0, peaks)
  assert row['gflop'] == 10 and row['gflops'] == 5 and row['matmul_share'] == 0.05 and row['conv_share'] == 0.1
  assert flops.account(None, 1.0, peaks)['bound'] == 'host (no XLA work)'


def test_benchmark_tiny_case_reports_the_flop_columns():
  case = benchmark.CASES['tiny'][0]  # offline forward, tiny model, 2 query chunks
  result = benchmark.run_case(case, repeats=1)
  assert result['gflop'] > 0 and not result['uncounted']
  assert result['gflops'] == pytest.approx(result['gflop'] / result['seconds'])
  assert result['matmul_share'] == pytest.approx(result['gflops'] / result['peaks']['matmul_gflops'])
  assert set(result['peaks']) == {'matmul_gflops', 'conv_gflops', 'copy_gbs'}
  table = benchmark.to_markdown([result], 'test machine')
  assert '| GFLOP | GFLOP/s | share of peak: matmul (conv) | bound by |' in table
  assert 'Peaks, measured in each case' in table and f'{result["gflop"]:,.1f} |' in table
