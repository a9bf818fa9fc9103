"""Temporal refinement: local correlation patches around the current estimate, mixed over time per point.

One refinement iteration, for every point and frame:
  1. correlate the point's (per-frame) feature with a 7x7 neighbourhood, in grid cells, of each pyramid grid
     around the current position (bilinear samples, zeros outside the grid);
  2. feed [0, 0, occlusion, expected_dist, features, correlations] through the PIPs-style MLP mixer, whose
     temporal mixing is a depthwise convolution over frames (causal when `use_causal_conv`);
  3. add the mixer's output to the position (in pixels of the level's image), the two logits and the features.
The position input is deliberately all zeros, as in the released model: the mixer never sees absolute positions.
"""

from typing import NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

PATCH_RADIUS = 3  # 7x7 neighbourhood, offsets -3..3 grid cells
PATCH_WIDTH = 2 * PATCH_RADIUS + 1
TEMPORAL_KERNEL = 3
EXPANSION = 4  # channel multiplier of the first temporal conv and of the channel MLP
HIRES_CHANNELS = 128
LOWRES_CHANNELS = 256
FEATURE_CHANNELS = HIRES_CHANNELS + LOWRES_CHANNELS
# Mixer output: position delta (x, y), occlusion delta, expected_dist delta, feature delta.
OUTPUT_CHANNELS = 4 + FEATURE_CHANNELS


def mixer_input_width(pyramid_level: int) -> int:
  """Channels of the mixer input: 2 (zeroed position) + 2 logits + features + 49 correlations per grid."""
  return 4 + FEATURE_CHANNELS + PATCH_WIDTH**2 * (2 + pyramid_level)


# ----------------------------------------------------------------------------------------------------------
# Correlation patches


def _gather_patches(
    grid: jax.Array,  # [b, t, h, w, c]
    positions: jax.Array,  # [b, n, t, 2] (y, x) raster coordinates of the grid
    queries: jax.Array,  # [b, n, t, c]
) -> jax.Array:  # [b, n, t, 7, 7]
  """Gathers the 8x8 block of grid cells every 7x7 bilinear patch reads, correlates, then interpolates.

  Correlation is linear in the features, so correlating the 8x8 block and interpolating the 64 scores gives the
  same numbers as interpolating 49 feature vectors first, at a quarter of the memory traffic.
  """
  b, t, h, w, c = grid.shape
  n = positions.shape[1]
  pad = 8  # any block start in [-8, size] stays inside the padded grid
  padded = jnp.pad(grid, ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0))).reshape(b * t, h + 2 * pad,
                                                                                      w + 2 * pad, c)
  index = positions - 0.5  # index coordinates of the patch centre
  lo = jnp.floor(index)
  frac = index - lo
  lo = lo.astype(jnp.int32)
  # Blocks entirely outside the grid read only zeros wherever they start, so clamping them is exact.
  start_y = jnp.clip(lo[..., 0], -PATCH_RADIUS - 2, h + PATCH_RADIUS) - PATCH_RADIUS + pad
  start_x = jnp.clip(lo[..., 1], -PATCH_RADIUS - 2, w + PATCH_RADIUS) - PATCH_RADIUS + pad
  frame = (jnp.arange(b)[:, None, None] * t + jnp.arange(t)[None, None, :]) * jnp.ones((1, n, 1), jnp.int32)

  size = PATCH_WIDTH + 1
  take = lambda f, y0, x0: jax.lax.dynamic_slice(padded, (f, y0, x0, 0), (1, size, size, c))[0]
  blocks = jax.vmap(take)(frame.reshape(-1), start_y.reshape(-1), start_x.reshape(-1))  # [b*n*t, 8, 8, c]
  scores = jnp.einsum('pyxc,pc->pyx', blocks, queries.reshape(-1, c)).reshape(b, n, t, size, size)

  fy = frac[..., 0, None, None]
  fx = frac[..., 1, None, None]
  top = scores[..., :-1, :-1] * (1 - fx) + scores[..., :-1, 1:] * fx
  bottom = scores[..., 1:, :-1] * (1 - fx) + scores[..., 1:, 1:] * fx
  return top * (1 - fy) + bottom * fy


def _bilinear_weights(position: jax.Array, size: int) -> jax.Array:
  """[..., 7, size]: weight of each grid index for the 7 offsets around `position` (zeros outside the grid)."""
  offsets = jnp.arange(-PATCH_RADIUS, PATCH_RADIUS + 1, dtype=jnp.float32)
  sample = position[..., None] + offsets - 0.5  # index coordinates, [..., 7]
  return jnp.maximum(0.0, 1.0 - jnp.abs(sample[..., None] - jnp.arange(size, dtype=jnp.float32)))


def _correlation_map_patches(
    grid: jax.Array,  # [b, t, h, w, c]
    positions: jax.Array,  # [b, n, t, 2] (y, x)
    queries: jax.Array,  # [b, n, t, c]
) -> jax.Array:  # [b, n, t, 7, 7]
  """The dense formulation (TPU-friendly): full correlation map, then separable bilinear patch weights."""
  h, w = grid.shape[2:4]
  corr = jnp.einsum('bthwc,bntc->bnthw', grid, queries)
  wy = _bilinear_weights(positions[..., 0], h)  # [b, n, t, 7, h]
  wx = _bilinear_weights(positions[..., 1], w)  # [b, n, t, 7, w]
  # Contract the map's minor axis (w) first, then h: two plain batched matrix products. On XLA:CPU this order
  # is ~1.5x faster (forward and backward) than the one jnp.einsum picks for the three operands.
  rows = jnp.einsum('bnthw,bntxw->bnthx', corr, wx)
  return jnp.einsum('bntyh,bnthx->bntyx', wy, rows)


# Which formulation `bilinear_interp_with_depthwise_conv=None` picks per JAX backend. CPU: the gather (offline
# forward, 24 frames x 256^2 x 256 points: 11.8 s against 12.6 s dense; scripts/benchmark.py). TPU: the dense
# one, which the official code provides for TPUs (gathers are slow there). GPU: the gather (not measured here).
DENSE_BY_BACKEND = {'cpu': False, 'gpu': False, 'cuda': False, 'rocm': False, 'tpu': True}


def default_dense() -> bool:
  """The patch formulation for the current default JAX backend (see `DENSE_BY_BACKEND`)."""
  return DENSE_BY_BACKEND.get(jax.default_backend(), False)


def correlation_patches(
    grids: Sequence[jax.Array],  # each [b, t, h_g, w_g, c_g]
    queries: Sequence[jax.Array],  # each [b, n, t, c_g]
    points: jax.Array,  # [b, n, t, 2] (x, y) raster pixels of `image_hw`
    image_hw: tuple[int, int],  # the raster `points` live in (the initial resolution)
    dense: bool = False,
) -> jax.Array:  # [b, n, t, 49 * len(grids)]
  """7x7 correlation patches (row-major, dy outer) of every grid, concatenated in grid order."""
  patches = []
  for grid, query in zip(grids, queries):
    h, w = grid.shape[2:4]
    # (y, x) in this grid's cells: pure rescaling of the (x, y) raster position.
    positions = jnp.stack([points[..., 1] * h / image_hw[0], points[..., 0] * w / image_hw[1]], axis=-1)
    extract = _correlation_map_patches if dense else _gather_patches
    patch = extract(grid, positions, query)
    patches.append(patch.reshape(patch.shape[:3] + (PATCH_WIDTH**2,)))
  return jnp.concatenate(patches, axis=-1)


def pyramid(hires: jax.Array, lowres: jax.Array, pyramid_level: int) -> list[jax.Array]:
  """[hires, lowres, pool(lowres), pool(pool(lowres)), ...]: 2x2 average pools, odd rows/cols dropped."""
  grids = [hires, lowres]
  for _ in range(pyramid_level):
    g = grids[-1]
    h, w = g.shape[2] // 2 * 2, g.shape[3] // 2 * 2
    g = g[:, :, :h, :w]
    grids.append(g.reshape(g.shape[:2] + (h // 2, 2, w // 2, 2, g.shape[-1])).mean(axis=(3, 5)))
  return grids


# ----------------------------------------------------------------------------------------------------------
# The mixer


class BlockContext(NamedTuple):
  """What the next frames need from one causal mixer block: its last `kernel - 1` frames of two signals."""
  normalized: jax.Array  # [p, 2, d] layer-normalised block input (input of `mlp1_up`)
  activated: jax.Array  # [p, 2, 4 * d] gelu output (input of `mlp1_up_1`)


class TemporalDepthwiseConv(hk.Module):
  """Depthwise 1-D convolution over frames: output channel c * multiplier + m reads input channel c.

  Parameters match Haiku's DepthwiseConv1D (`w [k, 1, channels * multiplier]`, `b`). Written as shifted
  multiply-adds, which XLA fuses; padding is (1, 1) frames, or (2, 0) when causal.

  Layout: channels are held split as `[..., group, c]` for channel `c * group_size + group`, so the minor
  axis is always the wide one (XLA:CPU vectorises over it; with a minor axis of 4 the mixer took ~2x longer).
  Input `[p, t, a, c]` (channel c * a + i at [..., i, c]); output `[p, t, a * multiplier, c]` for a = 1, or
  `[p, t, a, c]` for multiplier 1. The products and their order are those of the plain formulation.
  """

  def __init__(self, channel_multiplier: int, causal: bool, name: str):
    super().__init__(name=name)
    self._multiplier = channel_multiplier
    self._causal = causal

  def __call__(self, x: jax.Array) -> jax.Array:
    p, t, a, c = x.shape
    if a != 1 and self._multiplier != 1:
      raise ValueError('split input channels need channel_multiplier=1')
    groups = a * self._multiplier
    init = hk.initializers.TruncatedNormal(stddev=1.0 / jnp.sqrt(TEMPORAL_KERNEL))
    w = hk.get_parameter('w', [TEMPORAL_KERNEL, 1, c * groups], x.dtype, init=init)
    b = hk.get_parameter('b', [c * groups], x.dtype, init=jnp.zeros)
    before = TEMPORAL_KERNEL - 1 if self._causal else (TEMPORAL_KERNEL - 1) // 2
    after = TEMPORAL_KERNEL - 1 - before
    x = jnp.pad(x, ((0, 0), (before, after), (0, 0), (0, 0)))  # [p, t + 2, a, c]
    w = w.reshape(TEMPORAL_KERNEL, c, groups).transpose(0, 2, 1)  # [k, groups, c]
    out = b.reshape(c, groups).T
    for k in range(TEMPORAL_KERNEL):
      out = out + w[k] * x[:, k:k + t]
    return out  # [p, t, groups, c]


def _split_channels(x: jax.Array, groups: int) -> jax.Array:
  """[..., c * groups] (channel c * groups + g) -> [..., groups, c]."""
  return jnp.swapaxes(x.reshape(x.shape[:-1] + (x.shape[-1] // groups, groups)), -1, -2)


def _merge_channels(x: jax.Array) -> jax.Array:
  """Inverse of `_split_channels`: [..., groups, c] -> [..., c * groups]."""
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


@jax.custom_vjp
def _group_sum(y: jax.Array) -> jax.Array:
  """[p, t, groups, c] -> [p, t, c]: the sum over groups, whose backward pass is a plain broadcast.

  The barrier keeps XLA from fusing the whole residual-stream gradient into that broadcast (it then recomputed it
  for every group and temporal tap: ~3% of the `cpu` preset's train step on XLA:CPU).
  """
  return y.sum(axis=2)


def _group_sum_fwd(y):
  return y.sum(axis=2), y.shape


def _group_sum_bwd(shape, g):
  return (jnp.broadcast_to(jax.lax.optimization_barrier(g)[:, :, None], shape),)


_group_sum.defvjp(_group_sum_fwd, _group_sum_bwd)


class MixerBlock(hk.Module):
  """Temporal depthwise-conv mixing (x4 channels, gelu, grouped back) then a channel MLP, both residual."""

  def __init__(self, causal: bool, name: str = 'block'):
    super().__init__(name=name)
    self._causal = causal

  def __call__(
      self,
      x: jax.Array,  # [p, t, d]
      context: BlockContext | None = None,
  ) -> tuple[jax.Array, BlockContext | None]:
    p, t, d = x.shape
    norm = lambda name: hk.LayerNorm(axis=-1, create_scale=True, create_offset=False, name=name)
    gelu = lambda v: jax.nn.gelu(v, approximate=True)
    up = TemporalDepthwiseConv(EXPANSION, self._causal, name='mlp1_up')
    mix = TemporalDepthwiseConv(1, self._causal, name='mlp1_up_1')

    u = norm('layer_norm')(x)[:, :, None]  # [p, t, 1, d]
    if context is None:
      y = mix(gelu(up(u)))  # [p, t, EXPANSION, d]
      new_context = None
    else:
      # Prepend the history so the causal convolutions see the frames before this call.
      history = context.normalized.shape[1]
      u_ext = jnp.concatenate([context.normalized[:, :, None], u], axis=1)
      g = gelu(up(u_ext))[:, history:]
      g_ext = jnp.concatenate([_split_channels(context.activated, EXPANSION), g], axis=1)
      y = mix(g_ext)[:, history:]
      new_context = BlockContext(u_ext[:, -history:, 0], _merge_channels(g_ext[:, -history:]))
    # Output channel c * EXPANSION + m sits at [..., m, c]: the grouped sum is over axis 2.
    x = x + _group_sum(y)

    u = norm('layer_norm_1')(x)
    u = hk.Linear(EXPANSION * d, name='mlp2_up')(u)
    x = x + hk.Linear(d, name='mlp2_down')(gelu(u))
    return x, new_context


class PIPsMLPMixer(hk.Module):
  """Per-point temporal mixer shared by all refinement iterations and resolution levels."""

  def __init__(self, hidden_dim: int = 512, num_blocks: int = 12, kernel_shape: int = 3,
               use_causal_conv: bool = False, name: str = 'pips_mlp_mixer'):
    super().__init__(name=name)
    if kernel_shape != TEMPORAL_KERNEL:
      raise ValueError(f'mixer_kernel_shape={kernel_shape} is not supported: the released models use '
                       f'{TEMPORAL_KERNEL}')
    self._hidden_dim = hidden_dim
    self._num_blocks = num_blocks
    self._causal = use_causal_conv

  def __call__(
      self,
      x: jax.Array,  # [p, t, mixer_input_width]
      context: Sequence[BlockContext] | None = None,  # one per block
  ) -> tuple[jax.Array, list[BlockContext] | None]:  # [p, t, 388]
    x = hk.Linear(self._hidden_dim, name='linear')(x)
    new_context = []
    for j in range(self._num_blocks):
      x, block_context = MixerBlock(self._causal, name='block')(x, None if context is None else context[j])
      new_context.append(block_context)
    x = hk.LayerNorm(axis=-1, create_scale=True, create_offset=False, name='layer_norm')(x)
    x = hk.Linear(OUTPUT_CHANNELS, name='linear_1')(x)
    return x, (None if context is None else new_context)
