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
  return jnp.einsum('bntyh,bnthw,bntxw->bntyx', wy, corr, wx)


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

  Parameters match Haiku's DepthwiseConv1D (`w [k, 1, c * multiplier]`, `b`). Written as shifted
  multiply-adds, which XLA fuses; padding is (1, 1) frames, or (2, 0) when causal.
  """

  def __init__(self, channel_multiplier: int, causal: bool, name: str):
    super().__init__(name=name)
    self._multiplier = channel_multiplier
    self._causal = causal

  def __call__(self, x: jax.Array) -> jax.Array:  # [p, t, c] -> [p, t, c * multiplier]
    p, t, c = x.shape
    out_channels = c * self._multiplier
    init = hk.initializers.TruncatedNormal(stddev=1.0 / jnp.sqrt(TEMPORAL_KERNEL))
    w = hk.get_parameter('w', [TEMPORAL_KERNEL, 1, out_channels], x.dtype, init=init)
    b = hk.get_parameter('b', [out_channels], x.dtype, init=jnp.zeros)
    before = TEMPORAL_KERNEL - 1 if self._causal else (TEMPORAL_KERNEL - 1) // 2
    after = TEMPORAL_KERNEL - 1 - before
    x = jnp.pad(x, ((0, 0), (before, after), (0, 0)))[..., None]  # [p, t + 2, c, 1]
    # Output channel c * multiplier + m is input channel c times w[k, 0, c * multiplier + m]: broadcasting the
    # input over a trailing multiplier axis (instead of repeating it) keeps the backward pass's residuals at the
    # input's width, not the output's; the products and their order are the same.
    w = w.reshape(TEMPORAL_KERNEL, c, self._multiplier)
    out = b.reshape(c, self._multiplier)
    for k in range(TEMPORAL_KERNEL):
      out = out + w[k] * x[:, k:k + t]
    return out.reshape(p, t, out_channels)


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

    u = norm('layer_norm')(x)
    if context is None:
      y = mix(gelu(up(u)))
      new_context = None
    else:
      # Prepend the history so the causal convolutions see the frames before this call.
      history = context.normalized.shape[1]
      u_ext = jnp.concatenate([context.normalized, u], axis=1)
      g = gelu(up(u_ext))[:, history:]
      g_ext = jnp.concatenate([context.activated, g], axis=1)
      y = mix(g_ext)[:, history:]
      new_context = BlockContext(u_ext[:, -history:], g_ext[:, -history:])
    x = x + y.reshape(p, t, d, EXPANSION).sum(axis=-1)

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


def zero_context(num_points: int, hidden_dim: int, num_blocks: int) -> list[BlockContext]:
  """The causal context of a point with no history: zeros, equivalent to the causal zero padding."""
  history = TEMPORAL_KERNEL - 1
  return [
      BlockContext(jnp.zeros((num_points, history, hidden_dim), jnp.float32),
                   jnp.zeros((num_points, history, EXPANSION * hidden_dim), jnp.float32))
      for _ in range(num_blocks)
  ]
