"""TAP-Net for people: uint8 video of any size and length in, tracks in that video's pixels and visibility out.

    tracker = TAPNetTracker.from_checkpoint('checkpoints/tapnet_checkpoint.npy')   # released TAP-Net
    tracks, visible = tracker.track(video, query_points)   # [n, t, 2] (x, y), [n, t] bool

The counterpart of `tapir.Tracker` for the baseline (`tapir.models.tapnet`) over the same tracker core
(`tapir.tracking.core`): same inputs, resizing and rescaling. Frames go to `resolution` (default 256x256, the
released checkpoint's training and evaluation size); the whole video goes through the model in one call (the
backbone takes the frame count from the video, so every frame's temporal shift sees its true neighbours; no
windows). Visible iff the occlusion logit is <= 0 (the reference's sigmoid(occlusion) <= 0.5; TAP-Net has no
expected-distance head, so `expected_dist` is None).
"""

from typing import Any, Mapping, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from tapir import checkpoint as checkpoint_lib
from tapir.models import precision
from tapir.models import tapnet as tapnet_model
from tapir.tracking import core

RESOLUTION = tapnet_model.RESOLUTION  # the released checkpoint's training and evaluation size


class TAPNetTracker(core.ChunkedTracker):
  """TAP-Net for uint8 videos of any size and length, the way the reference evaluates it."""

  family = 'tapnet'
  has_expected_dist = False

  def __init__(self, params, state, model_kwargs: Mapping[str, Any] | None = None, query_chunk_size: int = 16,
               resolution: Sequence[int] = RESOLUTION, dtype: str = 'float32'):
    """`resolution`: (height, width) videos are resized to by default (`predict`'s `resize_to='model'`);
    `dtype`: the compute precision of the convolutions and dense layers (`tapir.models.precision`)."""
    kwargs = {k: v for k, v in (model_kwargs or {}).items() if k != 'cross_replica_axis'}
    super().__init__(params, state, kwargs, query_chunk_size, resolution, dtype)

  def _build(self, model_kwargs):
    model = lambda: tapnet_model.TAPNet(**model_kwargs, cross_replica_axis=None)
    no_queries = lambda video: jnp.zeros((video.shape[0], 1, 3), jnp.float32)

    def features(video):
      with precision.compute_dtype(self.dtype):
        return model()(video, False, no_queries(video), compute_regression=False)['feature_grid']

    def chunk(video, grid, query_points):
      with precision.compute_dtype(self.dtype):
        out = model()(video, False, query_points, feature_grid=grid)
      return out['tracks'], out['occlusion'], None

    return hk.transform_with_state(features).apply, hk.transform_with_state(chunk).apply

  def _visible(self, occlusion, expected_dist):
    del expected_dist  # TAP-Net has no such head
    return occlusion <= 0

  @classmethod
  def from_checkpoint(cls, path, query_chunk_size: int = 16, resolution: Sequence[int] = RESOLUTION,
                      dtype: str = 'float32', **overrides) -> 'TAPNetTracker':
    """Loads a TAP-Net checkpoint of any format; settings by `checkpoint.resolve_model_kwargs`."""
    contents = checkpoint_lib.read_checkpoint(path)
    kwargs = checkpoint_lib.resolve_model_kwargs(contents.model_kwargs, None, contents.params, overrides,
                                                 family=cls.family)
    return cls(contents.params, contents.state, kwargs, query_chunk_size, resolution, dtype)


def init_params(model_kwargs: Mapping[str, Any] | None = None, seed: int = 0):
  """Randomly initialised (params, state) of `tapir.TAPNet(**model_kwargs)` (batch-norm EMAs included)."""
  kwargs = {**(model_kwargs or {}), 'cross_replica_axis': None}

  def forward(video, queries):  # training mode: the batch-norm EMAs are created by their first update
    return tapnet_model.TAPNet(**kwargs)(video, is_training=True, query_points=queries)

  init = jax.jit(hk.transform_with_state(forward).init)
  return init(jax.random.PRNGKey(seed), jnp.zeros((1, 2, 16, 16, 3)), jnp.zeros((1, 1, 3)))
