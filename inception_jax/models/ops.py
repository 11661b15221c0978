"""Convolution and pooling primitives used by every model."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from jax import lax


def conv2d(x, kernel, strides: Sequence[int] = (1, 1), padding='SAME'):
  """NHWC x HWIO -> NHWC convolution."""
  return lax.conv_general_dilated(
      x, kernel, tuple(strides), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def max_pool_3x3_same(x):
  """3x3 max pool, stride 1, 'SAME' padding (padding never wins: it is -inf)."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), 'SAME')
