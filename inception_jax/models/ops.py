"""Convolution and pooling primitives used by every model.

Two formulations of the same functions. XLA's own convolution and max pool are used on
GPU and TPU. On CPU, XLA's gradients of these are slow (a 1x1 convolution's weight
gradient takes 6x longer than the same product as a matmul; a stride-1 max pool's
gradient 12x its forward), so there:

- stride-1 convolutions are matrix multiplies: a 1x1 kernel contracts the channel axis
  directly; a kxk kernel multiplies the k*k shifted views of the padded input, stacked on
  the channel axis, by the kernel reshaped to (k*k*in, out) (whose gradient is slicing
  and padding, not a convolution);
- the 3x3 stride-1 max pool is the maximum of 9 shifted views, with a gradient that
  routes each output's cotangent to the first maximal element of its window in row-major
  order, exactly what XLA's select-and-scatter does (ties included); the forward pass
  keeps that element's offset (int8), so the backward pass is one elementwise loop.

Both compute the same function with the same parameters; `impl` forces one ('xla' or
'matmul') and tests check they agree, values and gradients.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def _default_impl() -> str:
  return 'matmul' if jax.default_backend() == 'cpu' else 'xla'


def conv2d(x, kernel, strides: Sequence[int] = (1, 1), padding='SAME', *, impl: str | None = None):
  """NHWC x HWIO -> NHWC convolution; `padding` is 'SAME', 'VALID' or ((lo, hi), (lo, hi))."""
  impl = impl or _default_impl()
  if impl not in ('xla', 'matmul'):
    raise ValueError(f"conv2d impl must be 'xla' or 'matmul', got {impl!r}.")
  strides = tuple(strides)
  if impl == 'xla' or strides != (1, 1):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS)

  kh, kw, cin, cout = kernel.shape
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding)
  (top, bottom), (left, right) = padding
  if (kh, kw) == (1, 1) and top == bottom == left == right == 0:
    patches = x
  else:
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    patches = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
  # A 2-D matrix product: XLA's CPU backend runs these far faster than 4-D contractions.
  y = patches.reshape(-1, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
  return y.reshape(*patches.shape[:3], cout)


def max_pool_3x3_same(x, *, impl: str | None = None):
  """3x3 max pool, stride 1, 'SAME' padding (the padding is -inf: it never wins)."""
  if (impl or _default_impl()) == 'xla':
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), 'SAME')
  return _max_pool_3x3_views(x)


def _shifted_views(x):
  h, w = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]


def _max_and_argmax(x):
  """The window maxima, and which of the 9 row-major offsets first holds each (int8)."""
  views = _shifted_views(x)
  y, first = views[0], jnp.zeros(x.shape, jnp.int8)
  for k, view in enumerate(views[1:], start=1):
    first = jnp.where(view > y, jnp.int8(k), first)  # strictly greater: ties keep the earlier one
    y = jnp.maximum(y, view)
  return y, first


@jax.custom_vjp
def _max_pool_3x3_views(x):
  return _max_and_argmax(x)[0]


def _max_pool_bwd(first, g):
  # Input pixel p sits at offset k = (i, j) of the window centred at p + (1 - i, 1 - j): it
  # takes that window's cotangent if it is the window's first maximum. One pass over 9
  # shifted views of the cotangent and of `first` (XLA fuses it into one loop).
  h, w = g.shape[1:3]
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  gp, fp = jnp.pad(g, pad), jnp.pad(first, pad, constant_values=-1)
  grad = jnp.zeros_like(g)
  for k in range(9):
    i, j = divmod(k, 3)
    window = (slice(None), slice(2 - i, 2 - i + h), slice(2 - j, 2 - j + w))
    grad = grad + jnp.where(fp[window] == k, gp[window], 0)
  return (grad,)


_max_pool_3x3_views.defvjp(_max_and_argmax, _max_pool_bwd)  # residual: the int8 argmax
