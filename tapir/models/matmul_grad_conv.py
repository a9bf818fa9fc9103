"""A 2-D convolution whose backward pass is nine matrix products instead of XLA's filter- and input-gradient
convolutions.

`MatmulGradConv2D` is `hk.Conv2D` (same parameters, names, initialisers, and a forward pass that is the very
same `lax.conv_general_dilated` call, so outputs are bit for bit those of `hk.Conv2D`) with a custom VJP. On CPU,
inside a loop body (the scan over query chunks, `tapir.models.chunking.run`), XLA leaves the gradients of the
cost-volume head's small-channel convolutions as generic convolutions (`dim_labels=f01b_i01o->01bf`, input
dilation) that run at a few GFLOP/s, where outside a loop it rewrites them into its fast library kernels: in the
paper recipe's gradient they took 42% of the time. Here each kernel tap (dy, dx) is one product instead:

    d_w[dy, dx] = sum over (b, i, j) of  x_pad[b, s·i + dy, s·j + dx, :]ᵀ · g[b, i, j, :]
    d_x_pad[b, s·i + dy, s·j + dx, :] += g[b, i, j, :] · w[dy, dx]ᵀ

with `x_pad` the input padded as 'SAME' pads it and `s` the stride; the gradients equal XLA's up to float
summation order. Outside loops XLA's own gradients are faster, and on other backends they are unmeasured, so
these are used only inside `in_loop_body()` on CPU (scripts/bench_conv_grads.py, README Performance).
"""

import contextlib
import functools
import threading

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')
_LOOP_DEPTH = threading.local()  # at trace time: inside how many `in_loop_body` contexts


@contextlib.contextmanager
def in_loop_body():
  """Marks the model code traced inside as a loop body: on CPU, `MatmulGradConv2D` then differentiates by matrix
  products (module docstring)."""
  _LOOP_DEPTH.value = getattr(_LOOP_DEPTH, 'value', 0) + 1
  try:
    yield
  finally:
    _LOOP_DEPTH.value -= 1


def matmul_gradients() -> bool:
  """Whether a `MatmulGradConv2D` traced now takes its gradient from matrix products."""
  return getattr(_LOOP_DEPTH, 'value', 0) > 0 and jax.default_backend() == 'cpu'


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """'SAME' padding of one spatial axis, as XLA computes it (the extra pixel, if any, after)."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(
    x: jax.Array,  # [b, h, w, c_in]
    w: jax.Array,  # [kh, kw, c_in, c_out]
    stride: tuple[int, int],
) -> jax.Array:  # [b, ceil(h / sy), ceil(w / sx), c_out]
  """'SAME' convolution, forward exactly `hk.Conv2D`'s; backward by per-tap matrix products (module docstring)."""
  return jax.lax.conv_general_dilated(x, w, window_strides=stride, padding='SAME', lhs_dilation=(1, 1),
                                      rhs_dilation=(1, 1), dimension_numbers=_DIMENSIONS)


def _conv2d_fwd(x, w, stride):
  return conv2d(x, w, stride), (x, w)


def _tap_gradients(x, w, stride, g):  # 4-D x [b, h, w, c_in], w [kh, kw, c_in, c_out], g [b, h', w', c_out]
  """(d_x, d_w) of the 'SAME' convolution, one matrix product per kernel tap (module docstring)."""
  kh, kw = w.shape[:2]
  (sy, sx), (oh, ow) = stride, g.shape[1:3]
  pads = [_same_padding(x.shape[1], kh, sy), _same_padding(x.shape[2], kw, sx)]
  x_pad = jnp.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
  hp, wp = x_pad.shape[1:3]
  d_w, d_x_pad = [], jnp.zeros_like(x_pad)
  for dy in range(kh):
    for dx in range(kw):
      window = jax.lax.slice(x_pad, (0, dy, dx, 0), (x.shape[0], dy + sy * (oh - 1) + 1, dx + sx * (ow - 1) + 1,
                                                     x.shape[3]), (1, sy, sx, 1))  # [b, oh, ow, c_in]
      d_w.append(jnp.einsum('bijc,bijo->co', window, g))
      tap = jnp.einsum('bijo,co->bijc', g, w[dy, dx])  # [b, oh, ow, c_in]
      d_x_pad = d_x_pad + jax.lax.pad(tap, jnp.zeros((), tap.dtype), [
          (0, 0, 0), (dy, hp - dy - sy * (oh - 1) - 1, sy - 1), (dx, wp - dx - sx * (ow - 1) - 1, sx - 1), (0, 0, 0)])
  d_x = d_x_pad[:, pads[0][0]:pads[0][0] + x.shape[1], pads[1][0]:pads[1][0] + x.shape[2]]
  return d_x, jnp.stack(d_w).reshape(w.shape)


def _conv2d_bwd(stride, residuals, g):
  return _tap_gradients(*residuals, stride, g)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class MatmulGradConv2D(hk.Conv2D):
  """`hk.Conv2D(output_channels, kernel_shape, stride, padding='SAME')` on NHWC batches, with the backward pass of
  `conv2d` where `matmul_gradients()`, else XLA's. Only what the cost-volume head uses is supported: 'SAME'
  padding, no dilation, groups or mask."""

  def __init__(self, output_channels: int, kernel_shape: int, stride: int = 1, name: str | None = None):
    super().__init__(output_channels, kernel_shape, stride=stride, padding='SAME', name=name)

  def __call__(self, inputs: jax.Array, *, precision=None) -> jax.Array:  # [b, h, w, c] -> [b, h', w', out]
    if inputs.ndim != 4:
      raise ValueError(f'MatmulGradConv2D takes [batch, height, width, channels]; got shape {inputs.shape}')
    if precision is not None:
      raise ValueError('MatmulGradConv2D has no precision setting')
    w_shape = tuple(self.kernel_shape) + (inputs.shape[-1], self.output_channels)
    w_init = self.w_init or hk.initializers.TruncatedNormal(stddev=1. / np.sqrt(np.prod(w_shape[:-1])))
    w = hk.get_parameter('w', w_shape, inputs.dtype, init=w_init)  # as hk.Conv2D: w first, then b
    out = (conv2d if matmul_gradients() else conv2d.fun)(inputs, w, tuple(self.stride))
    return out + hk.get_parameter('b', (self.output_channels,), inputs.dtype, init=self.b_init)

