"""Per-frame global matching: cost volume -> initial track, occlusion and uncertainty (TAPIR's initialisation).

For each query, its low-resolution feature is correlated with every cell of every frame's low-resolution grid.
A small conv net turns each frame's cost map into a heatmap (softmax with a temperature) and a pooled
occlusion / expected-distance head. The position is a soft-argmax restricted to a radius around the heatmap's
peak, in raster coordinates of the initial resolution (see `tapir.conventions`).
"""

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from tapir import conventions
from tapir.models.matmul_grad_conv import MatmulGradConv2D

# Soft-argmax only averages cells within this radius (in grid cells, strict) of the heatmap's argmax.
SOFT_ARGMAX_RADIUS = 5.0


class InitialEstimate(NamedTuple):
  points: jax.Array  # [b, n, t, 2] (x, y) raster pixels of the initial resolution
  occlusion: jax.Array  # [b, n, t] logit
  expected_dist: jax.Array  # [b, n, t] logit


def heatmaps_to_points(
    heatmaps: jax.Array,  # [..., h, w], each summing to 1
    radius: float = SOFT_ARGMAX_RADIUS,
) -> jax.Array:  # [..., 2] (x, y) in grid-cell raster coordinates
  """Soft-argmax around the peak: probability-weighted mean of cell centres within `radius` of the argmax."""
  h, w = heatmaps.shape[-2:]
  ys = jnp.arange(h, dtype=jnp.float32) + 0.5
  xs = jnp.arange(w, dtype=jnp.float32) + 0.5
  flat = heatmaps.reshape(heatmaps.shape[:-2] + (h * w,))
  peak = jnp.argmax(flat, axis=-1)  # row-major, first occurrence on ties
  peak_y = ys[peak // w][..., None, None]
  peak_x = xs[peak % w][..., None, None]
  dist2 = (ys[:, None] - peak_y) ** 2 + (xs[None, :] - peak_x) ** 2
  weights = jnp.where(dist2 < radius**2, heatmaps, 0.0)
  total = jnp.maximum(jnp.sum(weights, axis=(-2, -1)), 1e-12)
  x = jnp.sum(weights * xs[None, :], axis=(-2, -1)) / total
  y = jnp.sum(weights * ys[:, None], axis=(-2, -1)) / total
  return jnp.stack([x, y], axis=-1)


def replace_query_frame(
    points: jax.Array,  # [b, n, t, 2] (x, y)
    query_points: jax.Array,  # [b, n, 3] (t, y, x), same raster as `points`
) -> jax.Array:  # [b, n, t, 2]
  """At each query's own frame (t rounded half-to-even) the estimate is the query position itself."""
  num_frames = points.shape[2]
  query_frame = jnp.round(query_points[..., 0]).astype(jnp.int32)
  is_query_frame = query_frame[..., None] == jnp.arange(num_frames)  # [b, n, t]
  query_xy = query_points[..., None, ::-1][..., :2]  # (x, y), [b, n, 1, 2]
  return jnp.where(is_query_frame[..., None], query_xy, points)


class CostVolumeHead:
  """The initialisation network. Its layers are created in the scope of the module that builds it.

  Built inside `TAPIR.__init__`, the layers get the flat names of the released checkpoints
  (`tapir/~/cost_volume_regression_1`, ..., `tapir/~/occlusion_out`).
  """

  def __init__(self, softmax_temperature: float):
    self.softmax_temperature = softmax_temperature
    # hk.Conv2D with a backward pass of matrix products (XLA's conv gradients are slow on these shapes)
    self.regression_1 = MatmulGradConv2D(16, 3, name='cost_volume_regression_1')
    self.regression_2 = MatmulGradConv2D(1, 3, name='cost_volume_regression_2')
    self.occlusion_1 = MatmulGradConv2D(32, 3, stride=2, name='cost_volume_occlusion_1')
    self.occlusion_2 = hk.Linear(16, name='cost_volume_occlusion_2')
    self.occlusion_out = hk.Linear(2, name='occlusion_out')

  def __call__(
      self,
      query_features: jax.Array,  # [b, n, c] low-resolution query features
      feature_grid: jax.Array,  # [b, t, h, w, c] low-resolution grid at the initial resolution
      initial_resolution: tuple[int, int],  # (height, width) of the image the grid was computed from
  ) -> InitialEstimate:
    b, t, h, w, _ = feature_grid.shape
    n = query_features.shape[1]
    cost = jnp.einsum('bnc,bthwc->tbnhw', query_features, feature_grid)
    z = jax.nn.relu(self.regression_1(cost.reshape(t * b * n, h, w, 1)))

    logits = self.regression_2(z).reshape(t, b, n, h * w).transpose(1, 2, 0, 3)  # [b, n, t, h*w]
    heatmaps = jax.nn.softmax(logits * self.softmax_temperature, axis=-1).reshape(b, n, t, h, w)
    points = heatmaps_to_points(heatmaps)
    points = conventions.convert_grid_coordinates(points, (w, h), initial_resolution[::-1])

    occ = jax.nn.relu(self.occlusion_1(z))
    occ = jnp.mean(occ, axis=(1, 2))
    occ = self.occlusion_out(jax.nn.relu(self.occlusion_2(occ)))  # [t*b*n, 2]
    occ = occ.reshape(t, b, n, 2).transpose(1, 2, 0, 3)
    return InitialEstimate(points=points, occlusion=occ[..., 0], expected_dist=occ[..., 1])
