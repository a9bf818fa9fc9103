"""TAP-Net: the TAP-Vid benchmark's baseline tracker (per-frame cost-volume matching), the model TAPIR improves on.

    model = tapir.TAPNet()                                     # in hk.transform_with_state
    out = model(video, is_training=False, query_points=queries, query_chunk_size=16)
    out['tracks']     # [b, n, t, 2] (x, y) pixels of `video`
    out['occlusion']  # [b, n, t] logit, > 0 leans towards occluded

Forward pass: a TSM-ResNet-18-v2 (`tapir.models.tsm_resnet`) gives a stride-8 grid of 256-d features per frame,
L2-normalised; each query's feature is sampled trilinearly at its (t, y, x); its dot product with every cell of
every frame (the cost volume) goes through two 3x3 convs to a heatmap (softmax at temperature 10) whose
soft-argmax around the peak is the track, and through a strided conv, a spatial mean and two linears to one
occlusion logit per frame. At the query's own frame the track is the query position. Unlike TAPIR there is no
refinement, no expected-distance logit and no high-resolution grid; the soft-argmax, the query-frame replacement and
the coordinate conventions are TAPIR's (`tapir.models.cost_volume`, `tapir.conventions`).

Module and parameter names follow the released `tapnet_checkpoint.npy` (`tap_net/~/tsm_resnet_video/...`,
`tap_net/~/cost_volume_regression_1`, ...); batch-norm EMAs are Haiku state. The backbone's batch norm uses batch
statistics when `is_training=True` (cross-replica over `cross_replica_axis`), the stored EMAs otherwise.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from tapir import conventions
from tapir.models import cost_volume as cost_volume_lib
from tapir.models import tsm_resnet

FEATURE_CHANNELS = 256
SOFTMAX_TEMPERATURE = 10.0  # hard-coded in the reference model (the task config's 20 never reaches it)
# The resolution the released checkpoint was trained and evaluated at; it has no size settings otherwise.
RESOLUTION = (256, 256)


def _l2_normalize(x: jax.Array) -> jax.Array:  # [..., c] -> [..., c]
  return x / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-12))


class TAPNet(hk.Module):
  """TAP-Net with the reference constructor, call and parameter layout. See the module docstring."""

  def __init__(self, feature_grid_stride: int = 8, num_heads: int = 1, cross_replica_axis: str | None = 'i',
               num_frames: int = 24, name: str = 'tap_net'):
    """Args (the reference's; the released checkpoint uses the defaults):

      feature_grid_stride: 4, 8, 16 or 32 (32 gives a stride-16 grid, as in the reference).
      num_heads: cost-volume heads; channel k belongs to head k % num_heads. Must divide 256.
      cross_replica_axis: mapped axis that batch-norm moments are averaged over in training (None: the local
        batch). With the default 'i', calls with is_training=True must run under `jax.pmap(..., axis_name='i')`.
      num_frames: accepted for the reference's signature (its golden files and configs pass it) and checked;
        nothing reads it, since 5-D videos carry their own frame count.
    """
    super().__init__(name=name)
    if feature_grid_stride not in tsm_resnet.UNIT_STRIDES:
      raise ValueError(f'feature_grid_stride must be one of {sorted(tsm_resnet.UNIT_STRIDES)}; '
                       f'got {feature_grid_stride}')
    if not isinstance(num_heads, int) or num_heads < 1 or FEATURE_CHANNELS % num_heads:
      raise ValueError(f'num_heads must be a positive divisor of {FEATURE_CHANNELS}; got {num_heads}')
    if num_frames < 1:
      raise ValueError(f'num_frames must be >= 1; got {num_frames}')
    self.feature_grid_stride = feature_grid_stride
    self.num_heads = num_heads
    self.tsm_resnet = tsm_resnet.TSMResNetV2(cross_replica_axis, name='tsm_resnet_video')
    # Conv3D with a depth-1 kernel over the (b * n) axis: 2-D convs stored with the reference's 5-D weights.
    conv = lambda channels, stride, name: hk.Conv3D(channels, (1, 3, 3), stride=(1, stride, stride),
                                                     padding='SAME', name=name)
    self.regression_1 = conv(16, 1, 'cost_volume_regression_1')
    self.regression_2 = conv(1, 1, 'cost_volume_regression_2')
    self.occlusion_1 = conv(32, 2, 'cost_volume_occlusion_1')
    self.occlusion_2 = hk.Linear(16, name='cost_volume_occlusion_2')
    self.occlusion_out = hk.Linear(1, name='occlusion_out')

  def tracks_from_cost_volume(
      self,
      query_feats: jax.Array,  # [b, n, c]
      feature_grid: jax.Array,  # [b, t, h, w, c]
      video_hw: tuple[int, int],  # (height, width) of the video the tracks are expressed in
  ) -> tuple[jax.Array, jax.Array]:  # tracks [b, n, t, 2] (x, y) video pixels, occlusion [b, n, t] logits
    """The track and occlusion heads for one chunk of queries (no query-frame replacement)."""
    b, t, h, w, c = feature_grid.shape
    n = query_feats.shape[1]
    heads = self.num_heads
    q = query_feats.reshape(b, n, c // heads, heads)  # channel k = i * heads + d belongs to head d
    f = feature_grid.reshape(b, t, h, w, c // heads, heads)
    cost = jnp.einsum('bncd,bthwcd->tbnhwd', q, f).reshape(t, b * n, h, w, heads)

    z = jax.nn.relu(self.regression_1(cost))  # [t, b * n, h, w, 16]
    logits = self.regression_2(z).reshape(t, b, n, h * w).transpose(1, 2, 0, 3)  # [b, n, t, h * w]
    heatmaps = jax.nn.softmax(SOFTMAX_TEMPERATURE * logits, axis=-1).reshape(b, n, t, h, w)
    points = cost_volume_lib.heatmaps_to_points(heatmaps)  # grid cells
    points = conventions.convert_grid_coordinates(points, (w, h), video_hw[::-1])

    occ = jnp.mean(self.occlusion_1(z), axis=(2, 3))  # [t, b * n, 32]; no ReLU here (TAPIR has one)
    occ = self.occlusion_out(jax.nn.relu(self.occlusion_2(occ)))  # [t, b * n, 1]
    occ = occ.reshape(t, b, n).transpose(1, 2, 0)
    return points, occ

  def __call__(
      self,
      video: jax.Array,  # [b, t, h, w, 3] in [-1, 1]
      is_training: bool,
      query_points: jax.Array,  # [b, n, 3] (t, y, x), raster pixels of `video`
      compute_regression: bool = True,
      query_chunk_size: int | None = None,
      get_query_feats: bool = False,
      feature_grid: jax.Array | None = None,  # [b, t, h', w', 256] precomputed (used as given)
  ) -> dict[str, jax.Array]:
    """Returns {'feature_grid' [b, t, h', w', 256], 'tracks' [b, n, t, 2], 'occlusion' [b, n, t]} and, with
    `get_query_feats`, 'query_feats' [b, n, 256]; only the features when `compute_regression` is False.

    `query_chunk_size` queries go through the heads at a time (None: all at once; the reference requires an int).
    Chunking changes nothing but float noise; gradients flow through every chunk. `video` is needed even with
    a precomputed `feature_grid`: its shape defines the coordinates.
    """
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f'video must be [batch, frames, height, width, 3]; got shape {video.shape}')
    if query_points.ndim != 3 or query_points.shape[-1] != 3 or query_points.shape[0] != video.shape[0]:
      raise ValueError(f'query_points must be [batch, num_points, 3] as (t, y, x) with batch {video.shape[0]}; '
                       f'got shape {query_points.shape}')
    if query_chunk_size is not None and query_chunk_size < 1:
      raise ValueError(f'query_chunk_size must be a positive int or None; got {query_chunk_size}')
    _, t, height, width, _ = video.shape
    if feature_grid is None:
      feature_grid = _l2_normalize(self.tsm_resnet(video, is_training, output_stride=self.feature_grid_stride))
    elif feature_grid.ndim != 5 or feature_grid.shape[:2] != video.shape[:2]:
      raise ValueError(f'feature_grid must be [batch, frames, h, w, c] matching video {video.shape[:2]}; '
                       f'got {feature_grid.shape}')
    h, w = feature_grid.shape[2:4]

    position = conventions.convert_grid_coordinates(query_points, (t, height, width), (t, h, w))
    query_feats = jax.vmap(conventions.interp)(feature_grid, position)  # [b, n, c], clamped at the borders
    out = {'feature_grid': feature_grid}
    if get_query_feats:
      out['query_feats'] = query_feats
    if not compute_regression:
      return out

    n = query_points.shape[1]
    size = n if query_chunk_size is None else query_chunk_size
    tracks, occlusion = [], []
    for start in range(0, n, size):
      points, occ = self.tracks_from_cost_volume(query_feats[:, start:start + size], feature_grid,
                                                 (height, width))
      tracks.append(points)
      occlusion.append(occ)
    tracks = cost_volume_lib.replace_query_frame(jnp.concatenate(tracks, axis=1), query_points)
    out['tracks'] = tracks
    out['occlusion'] = jnp.concatenate(occlusion, axis=1)
    return out
