"""Query chunking for `TAPIR.estimate_trajectories`: the queries go through initialisation and refinement a
chunk at a time, in a random order in training (only the first chunk back-propagates through refinement).

These are functions over the model's own per-chunk computation (`run_chunk`); they create no Haiku modules
of their own, so parameter names are those of the module that calls them.
"""

import contextlib
from typing import Any, Callable, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from tapir.models import matmul_grad_conv


class Plan(NamedTuple):
  """How `num_points` queries are laid out in `num_chunks` chunks of `chunk` (the last padded with repeats)."""
  num_points: int
  chunk: int
  num_chunks: int
  order: jax.Array  # [num_chunks * chunk] query index of every slot
  inverse: jax.Array  # [num_points] slot of every query

  @property
  def padded(self) -> int:
    return self.num_chunks * self.chunk


def plan(num_points: int, chunk_size: int | None, rng: jax.Array | None) -> Plan:
  """Chunks of `chunk_size` (None: one chunk), in a random order of the queries when `rng` is given."""
  chunk = num_points if chunk_size is None else max(1, min(int(chunk_size), num_points))
  num_chunks = -(-num_points // chunk)
  if rng is not None and num_chunks > 1:
    perm = jax.random.permutation(rng, num_points)
  else:
    perm = jnp.arange(num_points)
  order = jnp.concatenate([perm, jnp.broadcast_to(perm[:1], (num_chunks * chunk - num_points,))])
  inverse = jnp.argsort(order[:num_points]) if num_chunks > 1 else jnp.arange(num_points)
  return Plan(num_points, chunk, num_chunks, order, inverse)


def split(p: Plan, x: jax.Array, axis: int = 1) -> jax.Array:
  """[..., n (at axis), ...] -> [num_chunks, ..., chunk (at axis), ...]."""
  x = jnp.take(x, p.order, axis=axis)
  x = x.reshape(x.shape[:axis] + (p.num_chunks, p.chunk) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def merge(p: Plan, x: jax.Array, axis: int) -> jax.Array:
  """Inverse of `split`: [num_chunks, ..., chunk (at axis), ...] -> [..., n, ...] in the original order."""
  x = jnp.moveaxis(x, 0, axis)
  x = x.reshape(x.shape[:axis] + (p.padded,) + x.shape[axis + 2:])
  return jnp.take(x[(slice(None),) * axis + (slice(0, p.num_points),)], p.inverse, axis=axis)


@contextlib.contextmanager
def constant_parameters():
  """Within this context every Haiku parameter read is a stop-gradient constant (values unchanged)."""
  stop = lambda next_getter, value, _: jax.lax.stop_gradient(next_getter(value))
  with hk.custom_getter(stop):
    yield


def run(
    run_chunk: Callable[[Any, bool], Any],  # (chunk inputs, refinement_gradients) -> outputs
    chunked: dict[str, Any],  # inputs with a leading chunk axis; 'index' holds arange(num_chunks)
    num_chunks: int,
    is_training: bool,
) -> Any:
  """Runs every chunk; outputs stacked on a leading chunk axis.

  Training: only the first chunk back-propagates through refinement, as in the reference. It runs on its own;
  the other chunks run in a scan whose refinement sees only stop-gradient inputs and weights
  (`run_chunk(xs, False)`), so the gradient builds no backward pass and keeps no residuals for them (training
  memory grows with the chunk size, not with the number of queries). Inference: one scan over all chunks, in
  which refinement outputs of chunks after the first are stop-gradient (values unchanged).
  """
  first = jax.tree_util.tree_map(lambda x: x[0], chunked)
  if num_chunks == 1:
    return jax.tree_util.tree_map(lambda x: x[None], run_chunk(first, True))
  if is_training:
    rest = jax.tree_util.tree_map(lambda x: x[1:], chunked)
    out_first = run_chunk(first, True)
    with matmul_grad_conv.in_loop_body():
      _, out_rest = hk.scan(lambda _, xs: (None, run_chunk(xs, False)), None, rest)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), out_first, out_rest)

  def run_inference_chunk(_, xs):
    points, occ, expd, ctx = run_chunk(xs, True)
    keep = lambda x: jnp.concatenate([x[:1], jnp.where(xs['index'] == 0, x[1:], jax.lax.stop_gradient(x[1:]))])
    return None, (keep(points), keep(occ), keep(expd), ctx)

  with matmul_grad_conv.in_loop_body():
    _, out = hk.scan(run_inference_chunk, None, chunked)
  return out


def map_frames(encode: Callable[[jax.Array], tuple[jax.Array, ...]], frames: jax.Array,
               chunk: int | None) -> tuple[jax.Array, ...]:
  """`encode` ([p, ...] -> arrays [p, ...]) over frames, `chunk` frames at a time (None: all at once).

  Full chunks run in an `hk.scan`, the remainder on its own, all with the same weights.
  """
  if chunk is None or frames.shape[0] <= chunk:
    return encode(frames)
  num_full = frames.shape[0] // chunk
  body = frames[:num_full * chunk].reshape((num_full, chunk) + frames.shape[1:])
  _, outs = hk.scan(lambda c, x: (c, encode(x)), None, body)
  outs = tuple(o.reshape((-1,) + o.shape[2:]) for o in outs)
  if frames.shape[0] > num_full * chunk:
    rest = encode(frames[num_full * chunk:])
    outs = tuple(jnp.concatenate([o, r]) for o, r in zip(outs, rest))
  return outs
