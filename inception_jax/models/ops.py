"""Convolution and pooling primitives used by every model.

Two formulations of the same functions. XLA's own convolution and max pool are used on
GPU and TPU. On CPU, XLA's gradients of these are slow (a 1x1 convolution's weight
gradient takes 6x longer than the same product as a matmul; a stride-1 max pool's
gradient 12x its forward), so there:

- convolutions are matrix multiplies: a 1x1 stride-1 kernel contracts the channel axis
  directly; a kxk kernel multiplies the k*k (strided) views of the padded input, stacked
  on the channel axis, by the kernel reshaped to (k*k*in, out) (whose gradient is
  slicing and padding, not a convolution);
- a max pool is the maximum of its window's strided views, with a gradient that routes
  each output's cotangent to the first maximal element of its window in row-major order,
  exactly what XLA's select-and-scatter does (ties included); the forward pass keeps that
  element's offset (int8), so the backward pass is elementwise loops (one per stride
  phase).

Both compute the same function with the same parameters; `impl` forces one ('xla' or
'matmul') and tests check they agree, values and gradients.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def _impl(impl: str | None, op: str) -> str:
  """`impl`, or the backend's default: 'matmul' on CPU, 'xla' elsewhere."""
  if impl is None:
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  if impl not in ('xla', 'matmul'):
    raise ValueError(f"{op} impl must be 'xla' or 'matmul', got {impl!r}.")
  return impl


def conv2d(x, kernel, strides: Sequence[int] = (1, 1), padding='SAME', *, impl: str | None = None):
  """NHWC x HWIO -> NHWC convolution; `padding` is 'SAME', 'VALID' or ((lo, hi), (lo, hi))."""
  strides = tuple(strides)
  if _impl(impl, 'conv2d') == 'xla':
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS)

  kh, kw, cin, cout = kernel.shape
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding)
  (top, bottom), (left, right) = padding
  if (kh, kw) == (1, 1) and strides == (1, 1) and top == bottom == left == right == 0:
    patches = x
  else:
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_shape = [(size - k) // s + 1 for size, k, s in zip(xp.shape[1:3], (kh, kw), strides)]
    patches = jnp.concatenate(_views(xp, (kh, kw), strides, out_shape), axis=-1)
  # A 2-D matrix product: XLA's CPU backend runs these far faster than 4-D contractions.
  y = patches.reshape(-1, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
  return y.reshape(*patches.shape[:3], cout)


def max_pool(x, window: int, stride: int, pads: Sequence[tuple[int, int]], *, impl: str | None = None):
  """`window` x `window` max pool with stride `stride` over NHWC; `pads` ((top, bottom),
  (left, right)) are filled with -inf, so they never win."""
  if _impl(impl, 'max_pool') == 'xla':
    pads = ((0, 0), *pads, (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)
  (top, bottom), (left, right) = pads
  # A negative pad drops rows or columns that no window reaches (as reduce_window does).
  x = x[:, : x.shape[1] + min(bottom, 0), : x.shape[2] + min(right, 0), :]
  return _max_pool_views(x, window, stride, ((top, max(bottom, 0)), (left, max(right, 0))))


def max_pool_3x3_same(x, *, impl: str | None = None):
  """3x3 max pool, stride 1, 'SAME' padding."""
  return max_pool(x, 3, 1, ((1, 1), (1, 1)), impl=impl)


def _views(xp, window: Sequence[int], strides: Sequence[int], out_shape: Sequence[int]):
  """The strided views of `xp`, one per offset of the window (row-major), each `out_shape`."""
  (sh, sw), (h, w) = strides, out_shape
  return [
      xp[:, i : i + (h - 1) * sh + 1 : sh, j : j + (w - 1) * sw + 1 : sw, :]
      for i in range(window[0])
      for j in range(window[1])
  ]


def _max_pool_views(x, window: int, stride: int, pads):
  (top, bottom), (left, right) = pads
  padded = (x.shape[1] + top + bottom, x.shape[2] + left + right)
  out_shape = ((padded[0] - window) // stride + 1, (padded[1] - window) // stride + 1)

  offset_dtype = jnp.int8 if window * window < 128 else jnp.int32

  def max_and_first(x):
    """The window maxima, and which window offset (row-major) first holds each."""
    views = _views(
        jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf), (window, window), (stride, stride), out_shape
    )
    y, first = views[0], jnp.zeros(views[0].shape, offset_dtype)
    for k, view in enumerate(views[1:], start=1):
      first = jnp.where(view > y, jnp.asarray(k, offset_dtype), first)  # strictly greater: ties keep the earlier one
      y = jnp.maximum(y, view)
    return y, first

  def backward(first, g):
    # Each window's cotangent goes to its first maximum. Gathered per input pixel: the
    # padded pixel p = stride * q + r (r < stride) is offset i = r + stride * d of the
    # window at q - d, for d = 0, 1, ...; so each phase r of the input takes a sum of
    # shifted views of the cotangent, masked where `first` is that offset (one elementwise
    # loop per phase, which XLA fuses), and the phases interleave. XLA's own gradient, a
    # select-and-scatter, is several times slower on CPU.
    n, c = g.shape[0], g.shape[3]
    q = [-(-size // stride) for size in padded]  # pixels per phase, rounded up
    shift = (window - 1) // stride  # the largest d
    pad = ((0, 0), (shift, q[0] - out_shape[0]), (shift, q[1] - out_shape[1]), (0, 0))
    gp, fp = jnp.pad(g, pad), jnp.pad(first, pad, constant_values=-1)
    phases = []
    for rh in range(stride):
      for rw in range(stride):
        grad = jnp.zeros((n, q[0], q[1], c), g.dtype)
        for i in range(rh, window, stride):
          for j in range(rw, window, stride):
            di, dj = (i - rh) // stride, (j - rw) // stride
            view = (slice(None), slice(shift - di, shift - di + q[0]), slice(shift - dj, shift - dj + q[1]))
            grad = grad + jnp.where(fp[view] == i * window + j, gp[view], jnp.zeros((), g.dtype))
        phases.append(grad)
    grad = jnp.stack(phases, axis=3).reshape(n, q[0], q[1], stride, stride, c)
    grad = grad.transpose(0, 1, 3, 2, 4, 5).reshape(n, q[0] * stride, q[1] * stride, c)
    return (grad[:, top : top + x.shape[1], left : left + x.shape[2], :],)

  pool = jax.custom_vjp(lambda x: max_and_first(x)[0])
  pool.defvjp(max_and_first, backward)  # residual: the offsets, int8 for windows up to 11x11
  return pool(x)
