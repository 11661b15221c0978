"""Pooling with PyTorch's semantics, so ported networks see the same windows.

Where Flax's `nn.max_pool` / `nn.avg_pool` and PyTorch's pools differ:
- `ceil_mode=True` (torchvision's GoogLeNet): the output size rounds up, and the last
  window may hang over the input's end; torch drops a window that would start in the
  padding. Max pools pad with -inf, so the overhang never wins (`ops.max_pool`, whose
  gradient on CPU is ours, not XLA's select-and-scatter).
- `count_include_pad`: torch's default (True, torchvision's Inception v3) divides every
  window by its full area, padding included; False (pytorch-fid, TensorFlow) divides by
  the number of input pixels in the window.
- adaptive pooling (`nn.AdaptiveAvgPool2d`): output cell i averages input rows
  floor(i*H/out) .. ceil((i+1)*H/out), which also works when H < out.
"""

from __future__ import annotations


import jax.numpy as jnp
from jax import lax

from inception_jax.models import ops


def _pool_size(size: int, window: int, stride: int, padding: int, ceil_mode: bool) -> int:
  # torch's pooling_output_shape: in ceil mode a window may start in the last `stride - 1`
  # positions and overhang the input, even when the window is larger than the input.
  out = (size + 2 * padding - window + (stride - 1 if ceil_mode else 0)) // stride + 1
  if ceil_mode and (out - 1) * stride >= size + padding:
    out -= 1  # torch: the last window must start inside the input or its left padding
  if out < 1:
    raise ValueError(
        f'A {window}x{window} pooling window (stride {stride}, padding {padding}) does not fit a map of size {size}.'
    )
  return out


def _pads(x, window: int, stride: int, padding: int, ceil_mode: bool):
  pads = [(0, 0)]
  for size in x.shape[1:3]:
    out = _pool_size(size, window, stride, padding, ceil_mode)
    pads.append((padding, (out - 1) * stride + window - size - padding))
  return pads + [(0, 0)]


def max_pool(x, window: int, stride: int, padding: int = 0, *, ceil_mode: bool = False):
  """`torch.nn.MaxPool2d(window, stride, padding, ceil_mode=...)` on NHWC."""
  return ops.max_pool(x, window, stride, _pads(x, window, stride, padding, ceil_mode)[1:3])


def avg_pool(x, window: int, stride: int, padding: int = 0, *, count_include_pad: bool = True):
  """`torch.nn.functional.avg_pool2d(x, window, stride, padding, count_include_pad=...)` on NHWC."""
  pads = _pads(x, window, stride, padding, False)
  dims, strides = (1, window, window, 1), (1, stride, stride, 1)
  total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
  if count_include_pad or padding == 0:
    return total / (window * window)
  ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
  count = lax.reduce_window(ones, 0.0, lax.add, dims, strides, pads)
  return total / count


def adaptive_avg_pool(x, output_size: int):
  """`torch.nn.AdaptiveAvgPool2d(output_size)` on NHWC (slices and means: no multiply-adds)."""

  def bins(size):
    return [(i * size // output_size, -(-(i + 1) * size // output_size)) for i in range(output_size)]

  h_bins, w_bins = bins(x.shape[1]), bins(x.shape[2])
  rows = [jnp.stack([x[:, h0:h1, w0:w1].mean(axis=(1, 2)) for w0, w1 in w_bins], axis=1) for h0, h1 in h_bins]
  return jnp.stack(rows, axis=1)


def global_pool(x, kind: str = 'avg'):
  """(N, H, W, C) -> (N, C): 'avg', 'max', or 'avgmax' (their mean, as timm's)."""
  if kind == 'avg':
    return x.mean(axis=(1, 2))
  if kind == 'max':
    return x.max(axis=(1, 2))
  if kind == 'avgmax':
    return 0.5 * (x.mean(axis=(1, 2)) + x.max(axis=(1, 2)))
  raise ValueError(f"global_pool must be 'avg', 'max' or 'avgmax', got {kind!r}.")


def max_pool_3x3_s2(x):
  """timm's / torchvision's `nn.MaxPool2d(3, stride=2)`: no padding, rounding down."""
  return max_pool(x, 3, 2)


def avg_pool_3x3_s1(x):
  """timm's Inception-v4 pool towers: `nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)`."""
  return avg_pool(x, 3, 1, 1, count_include_pad=False)
