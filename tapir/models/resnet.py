"""ResNet-v2 backbone (pre-activation, basic blocks, no max-pool, no final norm).

TAPIR runs it on every frame independently and reads two outputs: the group-1 output (stride 4, 128 channels)
becomes the high-resolution feature grid, the group-3 output (stride 8, 256 channels) the low-resolution grid.

Normalisation:
  'instancenorm'  per image and channel over (h, w); what every released checkpoint uses (no Haiku state).
  'batchnorm'     cross-replica batch norm: in training the moments are `pmean`-ed over the mapped axis named
                  `cross_replica_axis` (so the model must run inside `jax.pmap(..., axis_name=that)`), giving
                  statistics of the whole global batch; EMAs (decay 0.9) live in Haiku state for inference.
  'layernorm'     per image over (h, w, c).
  None            no normalisation.
Module and parameter names follow the official layout (`resnet/~/block_group_g/~/block_b/~/conv_0`, ...).
"""

from typing import NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

NORMALIZATIONS = ('instancenorm', 'batchnorm', 'layernorm', None)
CHANNELS_PER_GROUP = (64, 128, 256, 256)
STRIDES = (1, 2, 2, 1)


class BackboneOutput(NamedTuple):
  hires: jax.Array  # [b, h / 4, w / 4, 128], output of block group 1
  lowres: jax.Array  # [b, h / 8, w / 8, 256], output of block group 3


def _make_norm(normalization: str | None, index: int, cross_replica_axis: str | None):
  if normalization == 'instancenorm':
    return hk.InstanceNorm(create_scale=True, create_offset=True, eps=1e-5, name=f'instancenorm_{index}')
  if normalization == 'batchnorm':
    return hk.BatchNorm(
        create_scale=True, create_offset=True, decay_rate=0.9, eps=1e-5,
        cross_replica_axis=cross_replica_axis, name=f'batchnorm_{index}')
  if normalization == 'layernorm':
    return hk.LayerNorm(axis=(-3, -2, -1), param_axis=-1, create_scale=True, create_offset=True, eps=1e-5,
                        name=f'layernorm_{index}')
  return None


class BlockV2(hk.Module):
  """Pre-activation basic block: relu(norm(x)) -> conv3x3(stride) -> relu(norm) -> conv3x3, plus shortcut."""

  def __init__(self, channels: int, stride: int, use_projection: bool, normalization: str | None,
               cross_replica_axis: str | None, name: str):
    super().__init__(name=name)
    self._norm_0 = _make_norm(normalization, 0, cross_replica_axis)
    self._norm_1 = _make_norm(normalization, 1, cross_replica_axis)
    self._conv_0 = hk.Conv2D(channels, 3, stride=stride, with_bias=False, padding='SAME', name='conv_0')
    self._conv_1 = hk.Conv2D(channels, 3, stride=1, with_bias=False, padding='SAME', name='conv_1')
    self._projection = None
    if use_projection:
      self._projection = hk.Conv2D(channels, 1, stride=stride, with_bias=False, padding='SAME',
                                   name='shortcut_conv')
    self._batchnorm = normalization == 'batchnorm'

  def _normalize(self, norm, x, is_training):
    if norm is None:
      return x
    return norm(x, is_training=is_training) if self._batchnorm else norm(x)

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    a = jax.nn.relu(self._normalize(self._norm_0, x, is_training))
    # The projection reads the pre-activated input, as in the reference implementation.
    shortcut = x if self._projection is None else self._projection(a)
    r = self._conv_0(a)
    r = self._conv_1(jax.nn.relu(self._normalize(self._norm_1, r, is_training)))
    return r + shortcut


class ResNet(hk.Module):
  """ResNet-v2 feature extractor returning the stride-4 and stride-8 feature maps."""

  def __init__(self, blocks_per_group: Sequence[int] = (2, 2, 2, 2), normalization: str | None = 'instancenorm',
               cross_replica_axis: str | None = 'i', name: str = 'resnet'):
    super().__init__(name=name)
    if normalization not in NORMALIZATIONS:
      raise ValueError(f'normalization must be one of {NORMALIZATIONS}, got {normalization!r}')
    if len(blocks_per_group) != 4 or min(blocks_per_group) < 1:
      raise ValueError(f'blocks_per_group must be 4 positive ints, got {tuple(blocks_per_group)}')
    self._initial_conv = hk.Conv2D(64, 7, stride=2, with_bias=False, padding='SAME', name='initial_conv')
    self._groups = []
    for g, (channels, stride, num_blocks) in enumerate(zip(CHANNELS_PER_GROUP, STRIDES, blocks_per_group)):
      self._groups.append(_BlockGroup(channels, stride, num_blocks, normalization, cross_replica_axis,
                                      name=f'block_group_{g}'))

  def __call__(self, images: jax.Array, is_training: bool) -> BackboneOutput:
    """images: [b, h, w, 3] in [-1, 1], h and w multiples of 8."""
    x = self._initial_conv(images)
    outputs = []
    for group in self._groups:
      x = group(x, is_training)
      outputs.append(x)
    return BackboneOutput(hires=outputs[1], lowres=outputs[3])


class _BlockGroup(hk.Module):

  def __init__(self, channels, stride, num_blocks, normalization, cross_replica_axis, name):
    super().__init__(name=name)
    self._blocks = [
        BlockV2(channels, stride if b == 0 else 1, b == 0, normalization, cross_replica_axis, name=f'block_{b}')
        for b in range(num_blocks)
    ]

  def __call__(self, x, is_training):
    for block in self._blocks:
      x = block(x, is_training)
    return x
