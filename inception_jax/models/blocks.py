"""Building blocks shared by the Inception networks: conv(-BN)(-ReLU) and the Inception block."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from inception_jax.models import ops

ModuleDef = Any


class Conv(nn.Module):
  """A 2-D convolution with Flax's parameter layout (`kernel` HWIO, `bias`).

  It differs from `nn.Conv` only in how the convolution is computed: `ops.conv2d`,
  whose gradient is written as matrix multiplies where XLA's own is slow (CPU).
  Weights move freely between the two.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: str | Sequence[tuple[int, int]] = 'SAME'
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
    y = ops.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y


class ConvBlock(nn.Module):
  """Convolution, then optional normalization, then optional activation.

  torchvision's `BasicConv2d` and seed 002's `conv_block`; submodules are named `conv`
  and `bn` as there. Without a norm the convolution carries a bias.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: str | Sequence[tuple[int, int]] = 'SAME'
  norm: ModuleDef | None = None  # e.g. partial(nn.BatchNorm, use_running_average=not train)
  act: Callable | None = nn.relu
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    x = Conv(
        self.features,
        self.kernel_size,
        self.strides,
        self.padding,
        use_bias=self.norm is None,
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        name='conv',
    )(x)
    if self.norm is not None:
      x = self.norm(name='bn')(x)
    if self.act is not None:
      x = self.act(x)
    return x


class InceptionBlock(nn.Module):
  """The Inception module of "Going deeper with convolutions" (Szegedy et al., 2014).

  Configured by the six widths of the paper's GoogLeNet table. Four towers read the same
  input and their outputs are concatenated on the channel axis:

      branch1x1:                      1x1 conv          -> num_1x1 maps
      branch3x3_reduce, branch3x3:    1x1 conv, 3x3 conv -> num_3x3 maps
      branch5x5_reduce, branch5x5:    1x1 conv, 5x5 conv -> num_5x5 maps
      branch_pool:                    3x3/1 max pool, 1x1 conv -> pool_proj maps

  `reduce=False` gives the paper's naive module (its Figure 2a, the seed's Figure 4): no
  1x1 reductions before the 3x3 and 5x5 convolutions and no projection after the pool,
  whose output (all input channels) is concatenated as it is.

  Activation placement:
  - `relu_after_concat=False` (GoogLeNet): every convolution is a full `conv` block
    (conv, norm if configured, ReLU); nothing follows the concatenation.
  - `relu_after_concat=True` (the seed's MNIST network): only the 1x1 reductions are
    followed by ReLU; each tower ends in a bare convolution and one ReLU follows the
    concatenation.
  """

  num_1x1: int
  num_3x3_reduce: int
  num_3x3: int
  num_5x5_reduce: int
  num_5x5: int
  pool_proj: int
  conv: ModuleDef = ConvBlock
  reduce: bool = True
  relu_after_concat: bool = False
  kernel_size_5x5: int = 5  # torchvision's GoogLeNet uses 3 here; the paper uses 5.

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    out_conv = functools.partial(conv, act=None) if self.relu_after_concat else conv
    k5 = self.kernel_size_5x5

    branch1 = out_conv(self.num_1x1, (1, 1), name='branch1x1')(x)
    if self.reduce:
      branch2 = conv(self.num_3x3_reduce, (1, 1), name='branch3x3_reduce')(x)
      branch3 = conv(self.num_5x5_reduce, (1, 1), name='branch5x5_reduce')(x)
    else:
      branch2 = branch3 = x
    branch2 = out_conv(self.num_3x3, (3, 3), name='branch3x3')(branch2)
    branch3 = out_conv(self.num_5x5, (k5, k5), name='branch5x5')(branch3)
    branch4 = ops.max_pool_3x3_same(x)
    if self.reduce:
      branch4 = out_conv(self.pool_proj, (1, 1), name='branch_pool')(branch4)

    y = jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)
    return nn.relu(y) if self.relu_after_concat else y


def check_image_batch(x, *, model: str, channels: int, min_size: int | None = None, size: int | None = None):
  """Raises ValueError with a useful message unless `x` is an NHWC image batch the model takes."""
  shape = tuple(x.shape)
  if len(shape) != 4:
    raise ValueError(
        f'{model} expects a batch of images shaped (batch, height, width, {channels}) (NHWC), '
        f'got an array of rank {len(shape)} with shape {shape}. '
        + ('Add a batch axis: x[None].' if len(shape) == 3 else '')
    )
  _, h, w, c = shape
  if c != channels:
    hint = (
        ' Inputs are NHWC (channels last): transpose NCHW arrays with x.transpose(0, 2, 3, 1).' if h == channels else ''
    )
    raise ValueError(f'{model} expects {channels} input channel(s), got {c} (input shape {shape}).{hint}')
  if size is not None and (h, w) != (size, size):
    raise ValueError(f'{model} takes {size}x{size} images only (its dense layer is sized for them), got {h}x{w}.')
  if min_size is not None and (h < min_size or w < min_size):
    raise ValueError(f'{model} needs images of at least {min_size}x{min_size}, got {h}x{w}.')
