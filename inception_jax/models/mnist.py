"""The seed's two-module Inception network for MNIST (seed 000, "Inception modules:
explained and implemented").

    input                           28x28x1
    inception1 (towers of 32)       28x28x128   ReLU after the concatenation
    inception2 (towers of 64)       28x28x256
    flatten                         200704
    dense 700, ReLU, dropout 0.5    700
    dense 10                        10

Every convolution has a bias and 'SAME' padding; the 16-map 1x1 reductions are followed
by ReLU, the towers' last convolutions are not (one ReLU follows the concatenation); the
pool tower is a stride-1 3x3 max pool then a 1x1 projection. 140,573,758 parameters, of
which 140,493,500 sit in the first dense layer.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from inception_jax.models.blocks import ConvBlock, InceptionBlock, check_image_batch


class MnistInception(nn.Module):
  """Two Inception modules and two dense layers, as seed 000 builds them."""

  num_classes: int = 10
  widths: Sequence[int] = (32, 64)  # maps per tower in each module ("map1", "map2")
  reduce_width: int = 16  # maps of the 1x1 reductions ("reduce1x1")
  hidden_units: int = 700  # "num_fc1"
  drop_rate: float = 0.5  # dropout on the hidden layer in training
  use_batchnorm: bool = False  # BatchNorm after every convolution (seed 002's conv_block) instead of biases
  image_size: int = 28
  in_channels: int = 1
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image_batch(x, model='mnist_inception', channels=self.in_channels, size=self.image_size)
    norm = None
    if self.use_batchnorm:
      norm = functools.partial(
          nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype
      )
    conv = functools.partial(ConvBlock, norm=norm, dtype=self.dtype)
    x = x.astype(self.dtype)
    features = {}
    for i, width in enumerate(self.widths, start=1):
      r = self.reduce_width
      x = InceptionBlock(width, r, width, r, width, width, conv=conv, relu_after_concat=True, name=f'inception{i}')(x)
      features[f'inception{i}'] = x  # 28x28x(4*width)
    x = x.reshape(x.shape[0], -1)  # 200704
    x = nn.relu(nn.Dense(self.hidden_units, dtype=self.dtype, name='fc1')(x))
    features['pre_logits'] = x  # 700
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='fc2')(x)
    return logits.astype(jnp.float32), features
