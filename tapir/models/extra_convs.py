"""BootsTAPIR's extra residual convolutions on the low-resolution features (before L2 normalisation).

Each layer replaces x by LayerNorm(x) (scale and offset) and adds conv3x3(gelu(conv3x3(x))), expanding to
`channel_multiplier` x 256 channels in between. The second conv of each layer starts at zero, so a freshly
initialised stack is the identity up to the LayerNorms. With `use_tsm`, the first conv also sees the previous
and next frame (temporal shift, edges replicated along the flattened batch*frame axis).
"""

import haiku as hk
import jax
import jax.numpy as jnp


class ExtraConvs(hk.Module):

  def __init__(self, num_layers: int = 5, channel_multiplier: int = 4, use_tsm: bool = False,
               name: str = 'extra_convs'):
    super().__init__(name=name)
    self._num_layers = num_layers
    self._channel_multiplier = channel_multiplier
    self._use_tsm = use_tsm

  def __call__(self, x: jax.Array) -> jax.Array:  # [b*t, h, w, c] -> [b*t, h, w, c]
    channels = x.shape[-1]
    for _ in range(self._num_layers):
      x = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name='layer_norm')(x)
      inputs = x
      if self._use_tsm:
        previous = jnp.concatenate([x[:1], x[:-1]], axis=0)
        following = jnp.concatenate([x[1:], x[-1:]], axis=0)
        inputs = jnp.concatenate([x, previous, following], axis=-1)
      r = hk.Conv2D(channels * self._channel_multiplier, 3, padding='SAME', name='conv2_d')(inputs)
      r = jax.nn.gelu(r, approximate=True)
      x = x + hk.Conv2D(channels, 3, padding='SAME', w_init=jnp.zeros, name='conv2_d')(r)
    return x
