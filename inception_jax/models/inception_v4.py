"""Inception-v4 ("Inception-v4, Inception-ResNet and the Impact of Residual Connections on
Learning", Szegedy et al., 2016) with timm's layout, so timm's `inception_v4` weights load.

    input                                   299x299x3
    features_0..2   stem convs              147x147x64
    features_3      Mixed3a                 73x73x160
    features_4      Mixed4a                 71x71x192
    features_5      Mixed5a                 35x35x384
    features_6..9   4 x InceptionA          35x35x384
    features_10     ReductionA (Mixed6a)    17x17x1024
    features_11..17 7 x InceptionB          17x17x1024
    features_18     ReductionB (Mixed7a)    8x8x1536
    features_19..21 3 x InceptionC          8x8x1536
    global pool, dropout, last_linear       1000

Porting conventions: every conv is timm's `ConvNormAct` (conv without bias, BatchNorm eps
1e-3, ReLU), padded as timm pads it (0 unless marked 'SAME'; every padded conv has stride 1
and an odd kernel, where torch's `k // 2` padding equals 'SAME'); the pool towers average
without counting the padding. Submodules carry timm's names; models/convert.py maps the
two kinds of `nn.Sequential` index in its state_dict keys (`features.5`, `branch1.0`) onto
ours (`features_5`, `branch1_0`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from inception_jax.models import pooling
from inception_jax.models.blocks import ConvBlock, check_image_batch
from inception_jax.models.pooling import avg_pool_3x3_s1, max_pool_3x3_s2

ModuleDef = Any

MIN_SIZE = 75  # the smallest input whose last reduction still leaves a 1x1 map


class Mixed3a(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    x0 = max_pool_3x3_s2(x)
    x1 = self.conv(96, (3, 3), (2, 2), name='conv')(x)
    return jnp.concatenate([x0, x1], axis=-1)


class Mixed4a(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    x0 = conv(64, (1, 1), name='branch0_0')(x)
    x0 = conv(96, (3, 3), name='branch0_1')(x0)
    x1 = conv(64, (1, 1), name='branch1_0')(x)
    x1 = conv(64, (1, 7), padding='SAME', name='branch1_1')(x1)
    x1 = conv(64, (7, 1), padding='SAME', name='branch1_2')(x1)
    x1 = conv(96, (3, 3), name='branch1_3')(x1)
    return jnp.concatenate([x0, x1], axis=-1)


class Mixed5a(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    x0 = self.conv(192, (3, 3), (2, 2), name='conv')(x)
    x1 = max_pool_3x3_s2(x)
    return jnp.concatenate([x0, x1], axis=-1)


class InceptionA(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(self.conv, padding='SAME')
    x0 = conv(96, (1, 1), name='branch0')(x)
    x1 = conv(64, (1, 1), name='branch1_0')(x)
    x1 = conv(96, (3, 3), name='branch1_1')(x1)
    x2 = conv(64, (1, 1), name='branch2_0')(x)
    x2 = conv(96, (3, 3), name='branch2_1')(x2)
    x2 = conv(96, (3, 3), name='branch2_2')(x2)
    x3 = conv(96, (1, 1), name='branch3_1')(avg_pool_3x3_s1(x))  # branch3.0 is the pool
    return jnp.concatenate([x0, x1, x2, x3], axis=-1)


class ReductionA(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    x0 = conv(384, (3, 3), (2, 2), name='branch0')(x)
    x1 = conv(192, (1, 1), name='branch1_0')(x)
    x1 = conv(224, (3, 3), padding='SAME', name='branch1_1')(x1)
    x1 = conv(256, (3, 3), (2, 2), name='branch1_2')(x1)
    x2 = max_pool_3x3_s2(x)
    return jnp.concatenate([x0, x1, x2], axis=-1)


class InceptionB(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(self.conv, padding='SAME')
    x0 = conv(384, (1, 1), name='branch0')(x)
    x1 = conv(192, (1, 1), name='branch1_0')(x)
    x1 = conv(224, (1, 7), name='branch1_1')(x1)
    x1 = conv(256, (7, 1), name='branch1_2')(x1)
    x2 = conv(192, (1, 1), name='branch2_0')(x)
    x2 = conv(192, (7, 1), name='branch2_1')(x2)
    x2 = conv(224, (1, 7), name='branch2_2')(x2)
    x2 = conv(224, (7, 1), name='branch2_3')(x2)
    x2 = conv(256, (1, 7), name='branch2_4')(x2)
    x3 = conv(128, (1, 1), name='branch3_1')(avg_pool_3x3_s1(x))
    return jnp.concatenate([x0, x1, x2, x3], axis=-1)


class ReductionB(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    x0 = conv(192, (1, 1), name='branch0_0')(x)
    x0 = conv(192, (3, 3), (2, 2), name='branch0_1')(x0)
    x1 = conv(256, (1, 1), name='branch1_0')(x)
    x1 = conv(256, (1, 7), padding='SAME', name='branch1_1')(x1)
    x1 = conv(320, (7, 1), padding='SAME', name='branch1_2')(x1)
    x1 = conv(320, (3, 3), (2, 2), name='branch1_3')(x1)
    x2 = max_pool_3x3_s2(x)
    return jnp.concatenate([x0, x1, x2], axis=-1)


class InceptionC(nn.Module):
  """Its towers fork: these names are timm's own attributes, not Sequential indices."""

  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(self.conv, padding='SAME')
    x0 = conv(256, (1, 1), name='branch0')(x)
    x1 = conv(384, (1, 1), name='branch1_0')(x)
    x1 = jnp.concatenate([conv(256, (1, 3), name='branch1_1a')(x1), conv(256, (3, 1), name='branch1_1b')(x1)], axis=-1)
    x2 = conv(384, (1, 1), name='branch2_0')(x)
    x2 = conv(448, (3, 1), name='branch2_1')(x2)
    x2 = conv(512, (1, 3), name='branch2_2')(x2)
    x2 = jnp.concatenate([conv(256, (1, 3), name='branch2_3a')(x2), conv(256, (3, 1), name='branch2_3b')(x2)], axis=-1)
    x3 = conv(256, (1, 1), name='branch3_1')(avg_pool_3x3_s1(x))
    return jnp.concatenate([x0, x1, x2, x3], axis=-1)


class InceptionV4(nn.Module):
  """Inception-v4. `__call__(x, *, train)` -> (logits, features).

  `features` holds the maps timm's `features_only` taps (its `feature_info` modules, at
  strides 2, 4, 8, 16, 32) and `pre_logits`, the pooled 1536 features. With
  `num_classes=0` the logits are those pooled features (after dropout, as in timm).
  """

  num_classes: int = 1000
  drop_rate: float = 0.0  # dropout before last_linear, in training
  global_pool: str = 'avg'  # 'avg', 'max' or 'avgmax'
  image_size: int = 299  # the canonical size; any size >= 75 works
  in_channels: int = 3
  dtype: Any = jnp.float32  # compute dtype; parameters and BatchNorm statistics stay float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image_batch(x, model='inception_v4', channels=self.in_channels, min_size=MIN_SIZE)
    # timm: BatchNorm2d(eps=1e-3), torch momentum 0.1 = Flax momentum 0.9.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype)
    conv = functools.partial(ConvBlock, padding='VALID', norm=norm, dtype=self.dtype)
    x = x.astype(self.dtype)

    layers = [
        functools.partial(conv, 32, (3, 3), (2, 2)),  # 149x149x32
        functools.partial(conv, 32, (3, 3)),  # 147x147x32
        functools.partial(conv, 64, (3, 3), padding='SAME'),  # 147x147x64
        functools.partial(Mixed3a, conv),  # 73x73x160
        functools.partial(Mixed4a, conv),  # 71x71x192
        functools.partial(Mixed5a, conv),  # 35x35x384
        *[functools.partial(InceptionA, conv)] * 4,  # 35x35x384
        functools.partial(ReductionA, conv),  # 17x17x1024
        *[functools.partial(InceptionB, conv)] * 7,  # 17x17x1024
        functools.partial(ReductionB, conv),  # 8x8x1536
        *[functools.partial(InceptionC, conv)] * 3,  # 8x8x1536
    ]
    taps = (2, 3, 9, 17, 21)  # timm's feature_info
    features = {}
    for i, layer in enumerate(layers):
      x = layer(name=f'features_{i}')(x)
      if i in taps:
        features[f'features_{i}'] = x

    x = pooling.global_pool(x, self.global_pool)
    features['pre_logits'] = x  # 1536
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    if self.num_classes:
      x = nn.Dense(self.num_classes, dtype=self.dtype, name='last_linear')(x)
    return x.astype(jnp.float32), features
