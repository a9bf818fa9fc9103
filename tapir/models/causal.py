"""Causal (online) state of TAPIR's refinement: what the next frames need from the frames already seen.

With `use_causal_conv=True` the mixer's temporal convolutions only look back (taps at t-2, t-1, t), so a point's
refinement at a new frame needs, per refinement iteration and per mixer block, the last two frames of two
signals (`refinement.BlockContext`). That is the whole history: its size does not grow with the frames seen.

Our format (`CausalState`): a list with one entry per refinement iteration (`num_pips_iter` x levels), each a
list with one `BlockContext` per mixer block, arrays `[b, n, 2, d]` and `[b, n, 2, 4 d]`. A state of zeros is
the state of a point with no history. `to_official` / `from_official` convert to and from the reference
implementation's list of dicts keyed by Haiku block names (`tapir/~/pips_mlp_mixer/block_causal_1`, ...).
"""

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from tapir.models import refinement

CausalState = list[list[refinement.BlockContext]]

_PREFIX = 'tapir/~/pips_mlp_mixer/'


def zero_state(batch: int, num_points: int, hidden_dim: int, num_blocks: int, num_pips_iter: int,
               num_levels: int = 1) -> CausalState:
  """All-zero state (no history) for any batch, point count, mixer width and number of levels."""
  history = refinement.TEMPORAL_KERNEL - 1
  block = lambda: refinement.BlockContext(
      jnp.zeros((batch, num_points, history, hidden_dim), jnp.float32),
      jnp.zeros((batch, num_points, history, refinement.EXPANSION * hidden_dim), jnp.float32))
  return [[block() for _ in range(num_blocks)] for _ in range(num_pips_iter * num_levels)]


def stack_by_level(state: CausalState, num_pips_iter: int, num_levels: int) -> list[list[refinement.BlockContext]]:
  """Per level, each block's contexts of that level's iterations stacked on a leading axis."""
  if len(state) != num_pips_iter * num_levels:
    raise ValueError(f'causal state has {len(state)} iterations; this model and video need '
                     f'{num_pips_iter} x {num_levels} levels = {num_pips_iter * num_levels}')
  return [
      jax.tree_util.tree_map(lambda *a: jnp.stack(a), *state[level * num_pips_iter:(level + 1) * num_pips_iter])
      for level in range(num_levels)
  ]


def unstack_levels(stacked: Sequence[list[refinement.BlockContext]]) -> CausalState:
  """Inverse of `stack_by_level`."""
  state = []
  for level in stacked:
    iters = jax.tree_util.tree_leaves(level)[0].shape[0]
    state.extend(jax.tree_util.tree_map(lambda a, i=i: a[i], level) for i in range(iters))
  return state


def _block_name(j: int) -> str:
  return 'block' if j == 0 else f'block_{j}'


def to_official(state: CausalState) -> list[dict[str, jax.Array]]:
  """Our state -> the reference implementation's list of dicts."""
  out = []
  for blocks in state:
    entry = {}
    for j, ctx in enumerate(blocks):
      entry[f'{_PREFIX}{_block_name(j)}_causal_1'] = ctx.normalized
      entry[f'{_PREFIX}{_block_name(j)}_causal_2'] = ctx.activated
    out.append(entry)
  return out


def from_official(state: Sequence[Mapping[str, jax.Array]]) -> CausalState:
  """The reference implementation's list of dicts -> our state."""
  out = []
  for entry in state:
    blocks = []
    j = 0
    while f'{_PREFIX}{_block_name(j)}_causal_1' in entry:
      blocks.append(refinement.BlockContext(jnp.asarray(entry[f'{_PREFIX}{_block_name(j)}_causal_1']),
                                            jnp.asarray(entry[f'{_PREFIX}{_block_name(j)}_causal_2'])))
      j += 1
    if not blocks or len(blocks) * 2 != len(entry):
      raise ValueError(f'not a causal context of the reference layout: keys {sorted(entry)}')
    out.append(blocks)
  return out


def reset_points(state, idx: jax.Array):
  """Zeroes the history of points `idx` (either layout; the result has the layout of `state`)."""
  official_format = bool(state) and isinstance(state[0], dict)
  typed = from_official(state) if official_format else state
  typed = jax.tree_util.tree_map(lambda a: a.at[:, idx].set(0.0), typed)
  return to_official(typed) if official_format else typed


def stack_input(state, batch: int, num_points: int, hidden_dim: int, num_blocks: int, num_pips_iter: int,
                num_levels: int) -> tuple[list[list[refinement.BlockContext]], bool]:
  """A context as `estimate_trajectories` takes it (None: zeros; ours or the reference layout), stacked by level.

  Returns the stacked context and whether the input was in the reference layout.
  """
  official_format = bool(state) and isinstance(state[0], dict)
  if state is None:
    state = zero_state(batch, num_points, hidden_dim, num_blocks, num_pips_iter, num_levels)
  elif official_format:
    state = from_official(state)
  return stack_by_level(state, num_pips_iter, num_levels), official_format


def unstack_output(stacked: Sequence[list[refinement.BlockContext]], official_format: bool):
  """The new context from the stacked one, in the layout the caller passed in."""
  state = unstack_levels(stacked)
  return to_official(state) if official_format else state
