r"""FLOP and memory-traffic accounting of JAX computations, counted once per loop trip; this machine's peaks.

    cost = flops.count(jax.jit(f), *args)        # f's jaxpr, every scan body times its length
    peaks = flops.measure_peaks()                 # f32 matmul and conv GFLOP/s, copy GB/s, median of a few runs
    flops.bound(cost, seconds, peaks)             # what limits a run of f that took `seconds`

Why not XLA's own count: `compiled.cost_analysis()` counts the body of a while loop once, not once per trip, and
every `lax.scan` (the model's query chunks, refinement iterations, frame chunks) lowers to one. For the offline
forward of 24 x 256^2 with 256 queries (4 chunks x 4 iterations) it reports 527 GFLOP, about a third of the work.
So the count here is read off the jaxpr instead, where a scan's `length` is known: each equation's FLOPs times the
product of the lengths of the scans around it (a `pmap` counts once per device; a `while` with a data-dependent
trip count counts its body once and is listed in `Cost.uncounted`). The per-equation rules are XLA's
(`HloCostAnalysis`), so on a computation without loops the two counts agree (tests/test_flops.py) as long as it
has no dead code, which XLA drops and the jaxpr keeps (a `jax.grad` of a forward whose value nobody uses: count
`jax.value_and_grad`, as the benchmark does):
  dot_general  2 x output elements x contracted size;
  convolution  2 x batch x output features x input features per group x the valid (output, kernel) position pairs
               of every spatial dimension (padding is not counted);
  elementwise  one per output element (exp, log, tanh, sqrt, ... are "transcendentals", kept apart as XLA does);
  reductions   one per input element; data movement (reshape, gather, slice, concatenate, ...) none.

Memory traffic (`Cost.bytes`) is a model, not a measurement: the operands and results of every equation that
XLA cannot fuse into its neighbours (dots, convolutions, gathers, scatters, reductions, concatenations, sorts),
elementwise chains being fused into those. It is a floor on the traffic (ignoring cache reuse), used only to say
whether a run could be bound by memory bandwidth.
"""

import collections
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

# XLA counts these as transcendentals, not flops (HloCostAnalysis::HandleElementwiseOp).
TRANSCENDENTAL = frozenset({
    'exp', 'exp2', 'log', 'log1p', 'expm1', 'tanh', 'logistic', 'sin', 'cos', 'tan', 'atan2', 'pow', 'sqrt',
    'rsqrt', 'cbrt', 'erf', 'erfc', 'erf_inv', 'asin', 'acos', 'atan', 'sinh', 'cosh', 'asinh', 'acosh', 'atanh',
    'lgamma', 'digamma'})
ELEMENTWISE = frozenset({
    'add', 'add_any', 'sub', 'mul', 'div', 'rem', 'max', 'min', 'neg', 'abs', 'sign', 'floor', 'ceil', 'round',
    'select_n', 'eq', 'ne', 'lt', 'le', 'gt', 'ge', 'and', 'or', 'not', 'xor', 'convert_element_type', 'clamp',
    'is_finite', 'nextafter', 'square', 'reciprocal', 'shift_left', 'shift_right_logical',
    'shift_right_arithmetic', 'population_count', 'imag', 'real', 'conj', 'complex'})
REDUCTION = frozenset({'reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod', 'reduce_and', 'reduce_or',
                       'argmax', 'argmin', 'cumsum', 'cummax', 'cummin', 'cumprod', 'cumlogsumexp'})
WINDOW = frozenset({'reduce_window_sum', 'reduce_window_max', 'reduce_window_min'})
SCATTER_COMBINE = frozenset({'scatter-add', 'scatter_add', 'scatter_mul', 'scatter-mul'})
# No arithmetic (XLA counts none): layout, data movement, random bits, collectives.
MOVEMENT = frozenset({
    'reshape', 'broadcast_in_dim', 'squeeze', 'expand_dims', 'transpose', 'slice', 'dynamic_slice',
    'dynamic_update_slice', 'concatenate', 'stack', 'unstack', 'split', 'pad', 'gather', 'scatter', 'copy',
    'copy_p', 'iota', 'rev', 'sort', 'stop_gradient', 'bitcast_convert_type', 'reduce_precision', 'device_put',
    'sharding_constraint', 'optimization_barrier', 'random_bits', 'random_seed', 'random_wrap', 'random_unwrap',
    'random_split', 'random_fold_in', 'threefry2x32', 'axis_index', 'psum', 'pmean', 'pmax', 'all_gather',
    'pbroadcast'})
# Calls: their body runs once per call (a scatter's `update_jaxpr`, by contrast, is per element: not a call).
CALLS = frozenset({'jit', 'pjit', 'closed_call', 'core_call', 'named_call', 'custom_jvp_call', 'custom_vjp_call',
                   'custom_vjp_call_jaxpr', 'remat', 'checkpoint', 'custom_lin'})
# Equations whose operands and results go through memory (XLA does not fuse them into elementwise neighbours).
MATERIALISED = frozenset({'dot_general', 'conv_general_dilated', 'gather', 'scatter', 'concatenate', 'stack',
                          'sort', 'select_and_scatter_add', 'dynamic_update_slice', 'transpose'}) | (
                              REDUCTION | WINDOW | SCATTER_COMBINE)


class Cost(NamedTuple):
  """FLOPs by kind and a memory-traffic floor of one call; totals as properties."""
  conv: float  # convolution FLOPs (a multiply-add is 2)
  dot: float  # dot_general (matmul, einsum) FLOPs
  other: float  # elementwise and reduction FLOPs
  transcendentals: float  # exp, log, tanh, sqrt, ... (not in `flops`, as in XLA)
  bytes: float  # memory-traffic floor (module docstring)
  uncounted: tuple  # primitives with no rule here, and loops with an unknown trip count (counted once)

  @property
  def flops(self) -> float:
    return self.conv + self.dot + self.other

  def __add__(self, other):
    return Cost(*(a + b for a, b in zip(self[:5], other[:5])), tuple(sorted(set(self.uncounted + other.uncounted))))

  def scale(self, factor: float) -> 'Cost':
    return Cost(*(a * factor for a in self[:5]), self.uncounted)


ZERO = Cost(0.0, 0.0, 0.0, 0.0, 0.0, ())


def _size(aval) -> int:
  return int(np.prod(aval.shape, dtype=np.int64)) if hasattr(aval, 'shape') else 1


def _nbytes(aval) -> int:
  return _size(aval) * aval.dtype.itemsize if hasattr(aval, 'dtype') else 0


def _valid_pairs(size_in: int, size_out: int, kernel: int, stride: int, pad_lo: int, lhs_dil: int,
                 rhs_dil: int) -> int:
  """(output, kernel) position pairs of one spatial dimension that read a real (not padded) input position."""
  dilated = (size_in - 1) * lhs_dil + 1
  o = np.arange(size_out)[:, None] * stride + np.arange(kernel)[None, :] * rhs_dil - pad_lo
  return int(np.sum((o >= 0) & (o < dilated) & (o % lhs_dil == 0)))


def _conv_flops(eqn) -> float:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  out = eqn.outvars[0].aval
  p = eqn.params
  dn = p['dimension_numbers']
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  batch = lhs.shape[lhs_spec[0]]
  in_features = lhs.shape[lhs_spec[1]]
  out_features = out.shape[out_spec[1]]
  pairs = 1
  for i, (ld, rd, od) in enumerate(zip(lhs_spec[2:], rhs_spec[2:], out_spec[2:])):
    pairs *= _valid_pairs(lhs.shape[ld], out.shape[od], rhs.shape[rd], p['window_strides'][i], p['padding'][i][0],
                          p['lhs_dilation'][i], p['rhs_dilation'][i])
  groups, batch_groups = p['feature_group_count'], p['batch_group_count']
  return 2.0 * (in_features / groups) * out_features * (batch / batch_groups) * pairs


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  lhs = eqn.invars[0].aval
  contracted = int(np.prod([lhs.shape[d] for d in lhs_contract], dtype=np.int64))
  return 2.0 * _size(eqn.outvars[0].aval) * contracted


def _integer_pow_flops(y: int) -> int:
  """Multiplies of exponentiation by squaring (XLA's expansion of integer_pow), one more to invert if y < 0."""
  y_abs = abs(y)
  muls = max(y_abs.bit_length() - 1 + bin(y_abs).count('1') - 1, 0)
  return muls + (y < 0)


def _call_body(params: dict):
  """The jaxpr a call equation runs (`jaxpr` of jit and remat, `call_jaxpr` of custom_jvp/vjp calls)."""
  body = params.get('call_jaxpr') or params.get('jaxpr') or params.get('fun_jaxpr')
  if body is None:
    raise ValueError(f'a call without a body: {sorted(params)}')
  return body


def jaxpr_cost(jaxpr) -> Cost:
  """The cost of one evaluation of `jaxpr` (a Jaxpr or ClosedJaxpr), loops counted once per trip."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = ZERO
  counts = collections.defaultdict(float)  # conv, dot, other, transcendentals, bytes
  uncounted = set()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    out_size = sum(_size(v.aval) for v in eqn.outvars)
    if name == 'scan':
      total += jaxpr_cost(eqn.params['jaxpr']).scale(eqn.params['length'])
    elif name == 'cond':
      branches = [jaxpr_cost(b) for b in eqn.params['branches']]
      total += max(branches, key=lambda c: c.flops + c.transcendentals)
    elif name == 'while':
      body = jaxpr_cost(eqn.params['body_jaxpr']) + jaxpr_cost(eqn.params['cond_jaxpr'])
      total += body._replace(uncounted=body.uncounted + ('while (trip count unknown: body counted once)',))
    elif name == 'xla_pmap':
      total += jaxpr_cost(eqn.params['call_jaxpr']).scale(eqn.params['global_axis_size'])
    elif name == 'shard_map':  # (what `jax.pmap` is now) the body is one shard's: once per shard
      mesh, manual = eqn.params['mesh'], eqn.params.get('manual_axes') or eqn.params.get('newly_manual_axes')
      shards = math.prod(mesh.shape[a] for a in (manual or mesh.axis_names))
      total += jaxpr_cost(eqn.params['jaxpr']).scale(shards)
    elif name in CALLS:
      total += jaxpr_cost(_call_body(eqn.params))
    else:
      if name == 'conv_general_dilated':
        counts['conv'] += _conv_flops(eqn)
      elif name == 'dot_general':
        counts['dot'] += _dot_flops(eqn)
      elif name in TRANSCENDENTAL:
        counts['transcendentals'] += out_size
      elif name == 'integer_pow':
        counts['other'] += out_size * _integer_pow_flops(eqn.params['y'])
      elif name in ELEMENTWISE:
        counts['other'] += out_size
      elif name in REDUCTION:
        counts['other'] += max(_size(eqn.invars[0].aval) - out_size, 0)
      elif name in WINDOW:
        counts['other'] += out_size * int(np.prod(eqn.params['window_dimensions']))
      elif name in SCATTER_COMBINE:
        counts['other'] += _size(eqn.invars[2].aval)
      elif name not in MOVEMENT:
        uncounted.add(name)
      if name in MATERIALISED:
        counts['bytes'] += sum(_nbytes(v.aval) for v in eqn.invars) + sum(_nbytes(v.aval) for v in eqn.outvars)
  own = Cost(counts['conv'], counts['dot'], counts['other'], counts['transcendentals'], counts['bytes'],
             tuple(sorted(uncounted)))
  return total + own


def count(fn: Callable, *args, **kwargs) -> Cost:
  """The cost of one call `fn(*args, **kwargs)` (traced, not run; `fn` may be jitted or pmapped)."""
  return jaxpr_cost(jax.make_jaxpr(fn)(*args, **kwargs))


def _evaluate(jaxpr, consts, args) -> list:
  """Evaluates `jaxpr` with every scan fully unrolled and every call (jit, custom_jvp/vjp, remat) inlined."""
  env = {}
  read = lambda v: v.val if isinstance(v, jax.extend.core.Literal) else env[v]
  for var, value in zip(jaxpr.constvars, consts):
    env[var] = value
  for var, value in zip(jaxpr.invars, args):
    env[var] = value
  for eqn in jaxpr.eqns:
    values = [read(v) for v in eqn.invars]
    p = eqn.params
    if eqn.primitive.name == 'scan':
      body, num_consts, num_carry = p['jaxpr'], p['num_consts'], p['num_carry']
      consts_in, carry, xs = values[:num_consts], values[num_consts:num_consts + num_carry], values[
          num_consts + num_carry:]

      def step(c, x, body=body, consts_in=consts_in, num_carry=num_carry):
        outs = _evaluate(body.jaxpr, body.consts, consts_in + list(c) + list(x))
        return outs[:num_carry], outs[num_carry:]
      carry, ys = jax.lax.scan(step, carry, xs, length=p['length'], reverse=p['reverse'], unroll=True)
      outs = list(carry) + list(ys)
    elif eqn.primitive.name in CALLS:
      inner = _call_body(p)
      outs = _evaluate(getattr(inner, 'jaxpr', inner), getattr(inner, 'consts', ()), values)
    else:
      outs = eqn.primitive.bind(*values, **p)
      outs = outs if eqn.primitive.multiple_results else [outs]
    for var, value in zip(eqn.outvars, outs):
      env[var] = value
  return [read(v) for v in jaxpr.outvars]


def unrolled(fn: Callable) -> Callable:
  """`fn` with every scan (outside conds and whiles) unrolled, returning its flat list of outputs: XLA's cost
  analysis of it counts every trip."""
  def run(*args):
    closed = jax.make_jaxpr(fn)(*args)
    return _evaluate(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args))
  return run


def xla_cost(fn: Callable, *args, unroll: bool = False) -> dict[str, float]:
  """XLA's own count of `jax.jit(fn)(*args)` ('flops', 'transcendentals', 'bytes accessed'): loop bodies once,
  or, with `unroll`, on `unrolled(fn)` (every trip; slow to compile for long loops)."""
  analysis = jax.jit(unrolled(fn) if unroll else fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0]
  return {k: float(analysis.get(k, 0.0)) for k in ('flops', 'transcendentals', 'bytes accessed')}


def median_seconds(fn: Callable, arg, *more, repeats: int, feed_back: bool = False) -> float:
  """Median time of `fn(arg, *more)` after a compile run; `feed_back`: each call's output is the next `arg`."""
  times = []
  for _ in range(repeats + 1):  # the first is the compile run
    start = time.perf_counter()
    out = jax.block_until_ready(fn(arg, *more))
    times.append(time.perf_counter() - start)
    arg = out if feed_back else arg
  times = sorted(times[1:])
  return times[len(times) // 2]


def measure_peaks(matmul: int = 2048, conv_shape: tuple = (4, 128, 128, 64), copy_mb: int = 512,
                  repeats: int = 5) -> dict[str, float]:
  """This process's achievable rates, medians of `repeats` runs after a compile run: a dense f32 `matmul`^3
  product (GFLOP/s); a 3x3 'SAME' conv of `conv_shape` [b, h, w, c] to c channels (GFLOP/s; the default is the
  backbone's first block group at 256^2, 4 frames: 24 at once run at about half that rate); and an in-place
  update of `copy_mb` MB (GB/s read + write; the buffer is donated, so no page of it is new, which a fresh
  output's would be: first touches alone run at ~8 GB/s on a 2-core EPYC)."""
  key = jax.random.split(jax.random.PRNGKey(0), 3)
  a = jax.random.normal(key[0], (matmul, matmul), jnp.float32)
  b = jax.random.normal(key[1], (matmul, matmul), jnp.float32)
  matmul_s = median_seconds(jax.jit(jnp.matmul), a, b, repeats=repeats)
  x = jax.random.normal(key[2], conv_shape, jnp.float32)
  w = jax.random.normal(key[0], (3, 3, conv_shape[-1], conv_shape[-1]), jnp.float32)
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                           dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  conv_flops = count(conv, x, w).flops
  conv_s = median_seconds(conv, x, w, repeats=repeats)
  size = copy_mb * 2**20 // 4
  copy_s = median_seconds(jax.jit(lambda v: v + 1.0, donate_argnums=0), jnp.zeros(size, jnp.float32),
                           repeats=repeats, feed_back=True)
  return dict(matmul_gflops=2.0 * matmul**3 / matmul_s / 1e9, conv_gflops=conv_flops / conv_s / 1e9,
              copy_gbs=2.0 * size * 4 / copy_s / 1e9)


def bound(cost: Cost, seconds: float, peaks: dict[str, float], device_seconds: float | None = None) -> str:
  """What limits a run of `cost` that took `seconds`, read off the numbers. Three shares of the time: compute (its
  convolutions at the conv peak plus its matmuls at the matmul peak), memory traffic (`cost.bytes` at the copy
  bandwidth) and the host (the part of `seconds` outside the XLA call, which took `device_seconds`). The largest
  names the bound if it explains at least half of the time; else 'other XLA work' does: ops the counts do not
  weigh (gathers, scatters, norms, softmaxes) or matmuls and convolutions far below peak at their shapes."""
  shares = {'compute': (cost.conv / peaks['conv_gflops'] + cost.dot / peaks['matmul_gflops']) / 1e9 / seconds,
            'memory traffic': cost.bytes / (peaks['copy_gbs'] * 1e9) / seconds,
            'Python/dispatch': 0.0 if device_seconds is None else max(1.0 - device_seconds / seconds, 0.0)}
  what = max(shares, key=shares.get)
  what = what if shares[what] >= 0.5 else 'other XLA work'
  return f'{what} (compute {shares["compute"]:.0%}, traffic {shares["memory traffic"]:.0%}, host ' \
         f'{shares["Python/dispatch"]:.0%})'


def account(cost: Cost | None, seconds: float | None, peaks: dict[str, float] | None,
            device_seconds: float | None = None) -> dict[str, Any]:
  """A benchmark case's FLOP columns: GFLOP (by kind), GFLOP/s, its shares of the peaks and the bound.
  `cost` None: no XLA work; `seconds` None: counted, not timed (compile-only cases)."""
  if cost is None:
    return dict(gflop=None, bound='host (no XLA work)')
  out = dict(gflop=cost.flops / 1e9, conv_gflop=cost.conv / 1e9, dot_gflop=cost.dot / 1e9, traffic_gb=cost.bytes / 1e9,
             uncounted=list(cost.uncounted))
  if seconds is not None:
    rate = cost.flops / seconds / 1e9
    out.update(gflops=rate, matmul_share=rate / peaks['matmul_gflops'], conv_share=rate / peaks['conv_gflops'],
               bound=bound(cost, seconds, peaks, device_seconds))
  return out


def peaks_line(peaks: list[dict[str, float]]) -> str:
  """The benchmark table's note on the peaks of its cases' processes (median and range of each)."""
  if not peaks:
    return ''
  mid = lambda key, unit: (f'{float(np.median([p[key] for p in peaks])):.0f} {unit} (range '
                           f'{min(p[key] for p in peaks):.0f}-{max(p[key] for p in peaks):.0f})')
  return (f"Peaks, measured in each case's process (median over the cases): f32 matmul "
          f'{mid("matmul_gflops", "GFLOP/s")}, 3x3 conv {mid("conv_gflops", "GFLOP/s")}, in-place update '
          f'{mid("copy_gbs", "GB/s")}. Each case\'s shares are of the peaks measured in its own process.')


def table_cells(result: dict[str, Any]) -> str:
  """The benchmark table's GFLOP, GFLOP/s, share-of-peak and bound cells of one case (`account`'s keys)."""
  if result.get('gflop') is None:
    return f' no XLA work | | | {result.get("bound", "")} |'
  if result.get('gflops') is None:
    return f' {result["gflop"]:,.1f} | | | |'
  return (f' {result["gflop"]:,.1f} | {result["gflops"]:.0f} | {result["matmul_share"]:.0%} '
          f'({result["conv_share"]:.0%}) | {result["bound"]} |')
