"""Inception-ResNet-v2 ("Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", Szegedy et al., 2016) with timm's layout, so timm's
`inception_resnet_v2` weights load.

    input                                   299x299x3
    conv2d_1a, conv2d_2a, conv2d_2b         147x147x64
    maxpool_3a, conv2d_3b, conv2d_4a        71x71x192
    maxpool_5a, mixed_5b                    35x35x320
    repeat     10 x Block35, scale 0.17     35x35x320
    mixed_6a                                17x17x1088
    repeat_1   20 x Block17, scale 0.10     17x17x1088
    mixed_7a                                8x8x2080
    repeat_2   9 x Block8, scale 0.20       8x8x2080
    block8     Block8, scale 1, no ReLU     8x8x2080
    conv2d_7b                               8x8x1536
    global pool, dropout, classif           1000

Porting conventions as in `inception_v4`: timm's `BasicConv2d` is conv (no bias), BatchNorm
eps 1e-3, ReLU; padding 0 unless marked 'SAME'; pool towers average without counting the
padding. Each residual block ends in a 1x1 conv *with* bias and no BatchNorm (`conv2d`),
whose output is scaled before it is added to the block's input. The three `repeat` stacks
keep timm's nesting (`repeat/3/...` is `repeat.3....`); only the towers' Sequential indices
are renamed (`branch1.0` -> `branch1_0`, in models/convert.py).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from inception_jax.models import pooling
from inception_jax.models.blocks import Conv, ConvBlock, check_image_batch
from inception_jax.models.pooling import avg_pool_3x3_s1, max_pool_3x3_s2

ModuleDef = Any

MIN_SIZE = 75  # the smallest input whose last reduction (mixed_7a) still leaves a 1x1 map


class Mixed5b(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(self.conv, padding='SAME')
    x0 = conv(96, (1, 1), name='branch0')(x)
    x1 = conv(48, (1, 1), name='branch1_0')(x)
    x1 = conv(64, (5, 5), name='branch1_1')(x1)
    x2 = conv(64, (1, 1), name='branch2_0')(x)
    x2 = conv(96, (3, 3), name='branch2_1')(x2)
    x2 = conv(96, (3, 3), name='branch2_2')(x2)
    x3 = conv(64, (1, 1), name='branch3_1')(avg_pool_3x3_s1(x))  # branch3.0 is the pool
    return jnp.concatenate([x0, x1, x2, x3], axis=-1)


class Block35(nn.Module):
  conv: ModuleDef
  scale: float = 1.0
  dtype: Any = jnp.float32  # of the bias-carrying 1x1 conv (`conv2d`); `conv` has its own

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(self.conv, padding='SAME')
    x0 = conv(32, (1, 1), name='branch0')(x)
    x1 = conv(32, (1, 1), name='branch1_0')(x)
    x1 = conv(32, (3, 3), name='branch1_1')(x1)
    x2 = conv(32, (1, 1), name='branch2_0')(x)
    x2 = conv(48, (3, 3), name='branch2_1')(x2)
    x2 = conv(64, (3, 3), name='branch2_2')(x2)
    return _residual(x, [x0, x1, x2], self.scale, relu=True, dtype=self.dtype)


class Mixed6a(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    x0 = conv(384, (3, 3), (2, 2), name='branch0')(x)
    x1 = conv(256, (1, 1), name='branch1_0')(x)
    x1 = conv(256, (3, 3), padding='SAME', name='branch1_1')(x1)
    x1 = conv(384, (3, 3), (2, 2), name='branch1_2')(x1)
    x2 = max_pool_3x3_s2(x)
    return jnp.concatenate([x0, x1, x2], axis=-1)


class Block17(nn.Module):
  conv: ModuleDef
  scale: float = 1.0
  dtype: Any = jnp.float32  # of the bias-carrying 1x1 conv (`conv2d`); `conv` has its own

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(self.conv, padding='SAME')
    x0 = conv(192, (1, 1), name='branch0')(x)
    x1 = conv(128, (1, 1), name='branch1_0')(x)
    x1 = conv(160, (1, 7), name='branch1_1')(x1)
    x1 = conv(192, (7, 1), name='branch1_2')(x1)
    return _residual(x, [x0, x1], self.scale, relu=True, dtype=self.dtype)


class Mixed7a(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    x0 = conv(256, (1, 1), name='branch0_0')(x)
    x0 = conv(384, (3, 3), (2, 2), name='branch0_1')(x0)
    x1 = conv(256, (1, 1), name='branch1_0')(x)
    x1 = conv(288, (3, 3), (2, 2), name='branch1_1')(x1)
    x2 = conv(256, (1, 1), name='branch2_0')(x)
    x2 = conv(288, (3, 3), padding='SAME', name='branch2_1')(x2)
    x2 = conv(320, (3, 3), (2, 2), name='branch2_2')(x2)
    x3 = max_pool_3x3_s2(x)
    return jnp.concatenate([x0, x1, x2, x3], axis=-1)


class Block8(nn.Module):
  conv: ModuleDef
  scale: float = 1.0
  relu: bool = True  # the last one (`block8`) has none
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(self.conv, padding='SAME')
    x0 = conv(192, (1, 1), name='branch0')(x)
    x1 = conv(192, (1, 1), name='branch1_0')(x)
    x1 = conv(224, (1, 3), name='branch1_1')(x1)
    x1 = conv(256, (3, 1), name='branch1_2')(x1)
    return _residual(x, [x0, x1], self.scale, relu=self.relu, dtype=self.dtype)


def _residual(x, towers, scale: float, *, relu: bool, dtype: Any):
  """relu(conv2d(concat(towers)) * scale + x), in timm's order; called inside a block's compact."""
  up = Conv(x.shape[-1], (1, 1), use_bias=True, dtype=dtype, name='conv2d')(jnp.concatenate(towers, axis=-1))
  out = up * scale + x
  return nn.relu(out) if relu else out


class Repeat(nn.Module):
  """timm's `nn.Sequential` of identical blocks; children are named '0', '1', ... like its keys."""

  block: ModuleDef
  count: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.count):
      x = self.block(name=str(i))(x)
    return x


class InceptionResnetV2(nn.Module):
  """Inception-ResNet-v2. `__call__(x, *, train)` -> (logits, features).

  `features` holds the maps timm's `features_only` taps (`conv2d_2b`, `conv2d_4a`,
  `repeat`, `repeat_1`, `conv2d_7b`, at strides 2 to 32) and `pre_logits`, the pooled 1536
  features. With `num_classes=0` the logits are those pooled features (after dropout, as
  in timm).
  """

  num_classes: int = 1000
  drop_rate: float = 0.0  # dropout before classif, in training
  global_pool: str = 'avg'  # 'avg', 'max' or 'avgmax'
  image_size: int = 299  # the canonical size; any size >= 75 works
  in_channels: int = 3
  dtype: Any = jnp.float32  # compute dtype; parameters and BatchNorm statistics stay float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image_batch(x, model='inception_resnet_v2', channels=self.in_channels, min_size=MIN_SIZE)
    # timm: BatchNorm2d(eps=1e-3), torch momentum 0.1 = Flax momentum 0.9.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype)
    conv = functools.partial(ConvBlock, padding='VALID', norm=norm, dtype=self.dtype)
    x = x.astype(self.dtype)
    features = {}

    x = conv(32, (3, 3), (2, 2), name='conv2d_1a')(x)  # 149x149x32
    x = conv(32, (3, 3), name='conv2d_2a')(x)  # 147x147x32
    x = features['conv2d_2b'] = conv(64, (3, 3), padding='SAME', name='conv2d_2b')(x)  # 147x147x64
    x = max_pool_3x3_s2(x)  # maxpool_3a: 73x73x64
    x = conv(80, (1, 1), name='conv2d_3b')(x)  # 73x73x80
    x = features['conv2d_4a'] = conv(192, (3, 3), name='conv2d_4a')(x)  # 71x71x192
    x = max_pool_3x3_s2(x)  # maxpool_5a: 35x35x192
    block35 = functools.partial(Block35, conv, scale=0.17, dtype=self.dtype)
    block17 = functools.partial(Block17, conv, scale=0.10, dtype=self.dtype)
    block8 = functools.partial(Block8, conv, scale=0.20, dtype=self.dtype)
    x = Mixed5b(conv, name='mixed_5b')(x)  # 35x35x320
    x = features['repeat'] = Repeat(block35, 10, name='repeat')(x)  # 35x35x320
    x = Mixed6a(conv, name='mixed_6a')(x)  # 17x17x1088
    x = features['repeat_1'] = Repeat(block17, 20, name='repeat_1')(x)  # 17x17x1088
    x = Mixed7a(conv, name='mixed_7a')(x)  # 8x8x2080
    x = Repeat(block8, 9, name='repeat_2')(x)  # 8x8x2080
    x = block8(scale=1.0, relu=False, name='block8')(x)  # 8x8x2080
    x = features['conv2d_7b'] = conv(1536, (1, 1), name='conv2d_7b')(x)  # 8x8x1536

    x = pooling.global_pool(x, self.global_pool)
    features['pre_logits'] = x  # 1536
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    if self.num_classes:
      x = nn.Dense(self.num_classes, dtype=self.dtype, name='classif')(x)
    return x.astype(jnp.float32), features
