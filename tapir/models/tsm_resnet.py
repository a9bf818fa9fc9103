"""TSM-ResNet-18-v2: TAP-Net's per-frame backbone with temporal channel shifts.

A pre-activation ResNet-18 (basic blocks, no stem norm, no final norm) run on every frame of a video, where the
first two units exchange a fraction of their channels with the neighbouring frames (temporal shift module, TSM).
Only the stem and units 0-2 are built: TAP-Net reads the raw output of unit 2 (256 channels).

Glossary: b batch, t frames, h/w height/width, c channels. Spatial ops act on [b * t, h, w, c] (rows video-major,
row b * t_total + t); the temporal shift and the batch-norm statistics are the only places frames interact.

Batch norm (`hk.BatchNorm`, decay 0.9, eps 1e-5): in training the per-channel moments span all frames of all clips
and pixels, and are `pmean`-ed over `cross_replica_axis` when it is set (the model must then run inside a pmap /
named axis of that name); the EMAs live in Haiku state and are what inference uses.
Module names follow the released TAP-Net checkpoint (`tsm_resnet_video/tsm_resnet_unit_0/block_0/conv_0`, ...).
"""

import haiku as hk
import jax
import jax.numpy as jnp

# output_stride -> stride of units 0, 1, 2. A stride of 32 cannot be reached without unit 3, which TAP-Net never
# builds, so it yields the same stride-16 grid as 16 (the reference's behaviour).
UNIT_STRIDES = {4: (1, 1, 1), 8: (1, 2, 1), 16: (1, 2, 2), 32: (1, 2, 2)}
UNIT_CHANNELS = (64, 128, 256)
BLOCKS_PER_UNIT = 2  # ResNet-18
SHIFT_FRACTIONS = (0.125, 0.125, 0.0)  # fraction of the block input's channels shifted each way, per unit
BN_DECAY = 0.9
BN_EPS = 1e-5


def temporal_shift(
    x: jax.Array,  # [b * t, h, w, c], video-major rows
    num_frames: int,
    fraction: float,
) -> jax.Array:  # [b * t, h, w, c]
  """Moves floor(c * fraction) channels one frame each way, zero-filled at the clip ends.

  The output's first n channels are the *last* n channels of the next frame and its last n channels are the
  *first* n channels of the previous frame; the middle channels stay. This permutation (unlike the textbook
  in-place shift) is what the released weights were trained with.
  """
  c = x.shape[-1]
  n = int(c * fraction)
  if n == 0:
    return x
  v = x.reshape((-1, num_frames) + x.shape[1:])  # [b, t, h, w, c]
  zeros = jnp.zeros_like(v[:, :1, ..., :n])
  from_next = jnp.concatenate([v[:, 1:, ..., c - n:], zeros], axis=1)
  from_prev = jnp.concatenate([zeros, v[:, :-1, ..., :n]], axis=1)
  out = jnp.concatenate([from_next, v[..., n:c - n], from_prev], axis=-1)
  return out.reshape(x.shape)


def _batch_norm(name: str, cross_replica_axis: str | None) -> hk.BatchNorm:
  return hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=BN_DECAY, eps=BN_EPS,
                      cross_replica_axis=cross_replica_axis, name=name)


class TSMBlock(hk.Module):
  """Pre-activation basic block; block 0 of a unit has the unit's stride and a 1x1 projection shortcut."""

  def __init__(self, channels: int, stride: int, use_projection: bool, shift_fraction: float, num_frames: int,
               cross_replica_axis: str | None, name: str):
    super().__init__(name=name)
    self._channels = channels
    self._stride = stride
    self._use_projection = use_projection
    self._shift_fraction = shift_fraction
    self._num_frames = num_frames
    self._axis = cross_replica_axis

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:  # [b * t, h, w, c] -> [b * t, h', w', c']
    a = jax.nn.relu(_batch_norm('batch_norm', self._axis)(x, is_training=is_training))
    if self._use_projection:  # reads the unshifted pre-activation
      shortcut = hk.Conv2D(self._channels, 1, stride=self._stride, with_bias=False, padding='SAME',
                           name='shortcut_conv')(a)
    else:
      shortcut = x
    a = temporal_shift(a, self._num_frames, self._shift_fraction)
    r = hk.Conv2D(self._channels, 3, stride=self._stride, with_bias=False, padding='SAME', name='conv_0')(a)
    r = jax.nn.relu(_batch_norm('batch_norm_1', self._axis)(r, is_training=is_training))
    # 'conv_1' is the bottleneck variant's middle conv; basic blocks skip that name.
    r = hk.Conv2D(self._channels, 3, stride=1, with_bias=False, padding='SAME', name='conv_2')(r)
    return shortcut + r


class TSMUnit(hk.Module):

  def __init__(self, channels: int, stride: int, shift_fraction: float, num_frames: int,
               cross_replica_axis: str | None, name: str):
    super().__init__(name=name)
    self._args = (channels, stride, shift_fraction, num_frames, cross_replica_axis)

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    channels, stride, fraction, num_frames, axis = self._args
    for k in range(BLOCKS_PER_UNIT):
      x = TSMBlock(channels, stride if k == 0 else 1, k == 0, fraction, num_frames, axis, name=f'block_{k}')(
          x, is_training)
    return x


class TSMResNetV2(hk.Module):
  """Stem + units 0-2 of TSM-ResNet-18-v2; returns unit 2's raw output (no final norm, not normalised)."""

  def __init__(self, cross_replica_axis: str | None = 'i', name: str = 'tsm_resnet_video'):
    super().__init__(name=name)
    self._axis = cross_replica_axis

  def __call__(
      self,
      video: jax.Array,  # [b, t, h, w, 3] in [-1, 1]
      is_training: bool,
      output_stride: int = 8,
  ) -> jax.Array:  # [b, t, ceil(h / s), ceil(w / s), 256], s = min(output_stride, 16)
    if output_stride not in UNIT_STRIDES:
      raise ValueError(f'output_stride must be one of {sorted(UNIT_STRIDES)}; got {output_stride}')
    b, t = video.shape[:2]
    x = video.reshape((b * t,) + video.shape[2:])
    x = hk.Conv2D(64, 7, stride=2, with_bias=False, padding='SAME', name='tsm_resnet_stem')(x)
    x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME')
    for u, (channels, stride, fraction) in enumerate(zip(UNIT_CHANNELS, UNIT_STRIDES[output_stride],
                                                         SHIFT_FRACTIONS)):
      x = TSMUnit(channels, stride, fraction, t, self._axis, name=f'tsm_resnet_unit_{u}')(x, is_training)
    return x.reshape((b, t) + x.shape[1:])
