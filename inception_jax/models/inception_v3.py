"""Inception v3 ("Rethinking the Inception Architecture for Computer Vision", Szegedy et al.,
2015) with torchvision's and timm's layout and names, and pytorch-fid's FID Inception as
options of the same module.

    input                                       299x299x3
    Conv2d_1a_3x3 /2, 2a_3x3, 2b_3x3            147x147x64
    max pool 3x3/2                              73x73x64     features['maxpool1']  (pytorch-fid 64)
    Conv2d_3b_1x1, Conv2d_4a_3x3                71x71x192
    max pool 3x3/2                              35x35x192    features['maxpool2']  (pytorch-fid 192)
    Mixed_5b, 5c, 5d (InceptionA)               35x35x288
    Mixed_6a (InceptionB, reduction)            17x17x768
    Mixed_6b..6e (InceptionC, 7x1/1x7)          17x17x768    features['Mixed_6e']  (pytorch-fid 768)
      -> AuxLogits                              1000
    Mixed_7a (InceptionD, reduction)            8x8x1280
    Mixed_7b, 7c (InceptionE)                   8x8x2048
    global pool                                 2048         features['pre_logits'] (pytorch-fid 2048)
    dropout, fc                                 1000

Porting conventions: every conv is torchvision's `BasicConv2d` (conv without bias,
BatchNorm eps 1e-3, ReLU); convs pad as torch pads them (none, or k // 2 = 'SAME' for
stride 1); the pool towers average 3x3/1 with the padding counted (torch's default).

pytorch-fid's FID Inception (`inception_v3_fid`) differs only in data: 1008 classes, no
aux head, pool towers that do not count the padding (TensorFlow's), and a max pool in
Mixed_7c's pool tower (`FIDInceptionE_2`).

The aux head runs in evaluation too. torchvision's needs Mixed_6e at 17x17 or more
(299x299 inputs); below that its 5x5/3 pool is clipped to the map and the map zero-padded
to the 5x5 its conv1 needs, so every input from 75x75 up gives aux logits, and the result
is torchvision's wherever torchvision runs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from inception_jax import preprocess
from inception_jax.models import pooling
from inception_jax.models.blocks import ConvBlock, check_image_batch

ModuleDef = Any

MIN_SIZE = 75  # the smallest input Mixed_7a's 3x3/2 convolutions accept (Mixed_6e 3x3)

# pytorch-fid's InceptionV3.BLOCK_INDEX_BY_DIM, as our feature names: dims -> key.
FID_FEATURES = {64: 'maxpool1', 192: 'maxpool2', 768: 'Mixed_6e', 2048: 'pre_logits'}


class InceptionA(nn.Module):
  pool_features: int
  conv: ModuleDef
  pool: Callable  # the pool tower's 3x3/1 pool

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b1 = conv(64, (1, 1), name='branch1x1')(x)
    b5 = conv(48, (1, 1), name='branch5x5_1')(x)
    b5 = conv(64, (5, 5), padding='SAME', name='branch5x5_2')(b5)
    b3 = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = conv(96, (3, 3), padding='SAME', name='branch3x3dbl_2')(b3)
    b3 = conv(96, (3, 3), padding='SAME', name='branch3x3dbl_3')(b3)
    bp = conv(self.pool_features, (1, 1), name='branch_pool')(self.pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b3 = conv(384, (3, 3), (2, 2), name='branch3x3')(x)
    bd = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = conv(96, (3, 3), padding='SAME', name='branch3x3dbl_2')(bd)
    bd = conv(96, (3, 3), (2, 2), name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, pooling.max_pool(x, 3, 2)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  conv: ModuleDef
  pool: Callable

  @nn.compact
  def __call__(self, x):
    conv, c7 = self.conv, self.channels_7x7
    b1 = conv(192, (1, 1), name='branch1x1')(x)
    b7 = conv(c7, (1, 1), name='branch7x7_1')(x)
    b7 = conv(c7, (1, 7), padding='SAME', name='branch7x7_2')(b7)
    b7 = conv(192, (7, 1), padding='SAME', name='branch7x7_3')(b7)
    bd = conv(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = conv(c7, (7, 1), padding='SAME', name='branch7x7dbl_2')(bd)
    bd = conv(c7, (1, 7), padding='SAME', name='branch7x7dbl_3')(bd)
    bd = conv(c7, (7, 1), padding='SAME', name='branch7x7dbl_4')(bd)
    bd = conv(192, (1, 7), padding='SAME', name='branch7x7dbl_5')(bd)
    bp = conv(192, (1, 1), name='branch_pool')(self.pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b3 = conv(192, (1, 1), name='branch3x3_1')(x)
    b3 = conv(320, (3, 3), (2, 2), name='branch3x3_2')(b3)
    b7 = conv(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = conv(192, (1, 7), padding='SAME', name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding='SAME', name='branch7x7x3_3')(b7)
    b7 = conv(192, (3, 3), (2, 2), name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, pooling.max_pool(x, 3, 2)], axis=-1)


class InceptionE(nn.Module):
  conv: ModuleDef
  pool: Callable

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b1 = conv(320, (1, 1), name='branch1x1')(x)
    b3 = conv(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate(
        [
            conv(384, (1, 3), padding='SAME', name='branch3x3_2a')(b3),
            conv(384, (3, 1), padding='SAME', name='branch3x3_2b')(b3),
        ],
        axis=-1,
    )
    bd = conv(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = conv(384, (3, 3), padding='SAME', name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate(
        [
            conv(384, (1, 3), padding='SAME', name='branch3x3dbl_3a')(bd),
            conv(384, (3, 1), padding='SAME', name='branch3x3dbl_3b')(bd),
        ],
        axis=-1,
    )
    bp = conv(192, (1, 1), name='branch_pool')(self.pool(x))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
  """5x5/3 average pool, conv0 1x1 128, conv1 5x5 768, global average, fc."""

  num_classes: int
  conv: ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # 17x17x768 at 299x299
    x = nn.avg_pool(x, (min(5, x.shape[1]), min(5, x.shape[2])), strides=(3, 3), padding='VALID')  # 5x5x768
    x = self.conv(128, (1, 1), name='conv0')(x)
    short_h, short_w = max(0, 5 - x.shape[1]), max(0, 5 - x.shape[2])
    if short_h or short_w:  # below 299x299 inputs only, where torchvision fails
      x = jnp.pad(x, ((0, 0), (short_h // 2, short_h - short_h // 2), (short_w // 2, short_w - short_w // 2), (0, 0)))
    x = self.conv(768, (5, 5), name='conv1')(x)  # 1x1x768
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)


class InceptionV3(nn.Module):
  """Inception v3. `__call__(x, *, train)` -> (logits, features).

  `features`: 'maxpool1', 'maxpool2', 'Mixed_5d', 'Mixed_6e', 'Mixed_7c' (maps),
  'pre_logits' (pooled 2048; `FID_FEATURES` names pytorch-fid's taps) and, when the model
  has an aux head (`aux_logits` and `num_classes > 0`), 'aux_logits' (float32).
  With `num_classes=0` the logits are the pooled features (after dropout, as timm).
  """

  num_classes: int = 1000
  aux_logits: bool = True
  transform_input: bool = False  # torchvision's: ImageNet-normalized input -> [-1, 1] (preprocess.transform_input)
  count_include_pad: bool = True  # pool towers divide by 9 at borders (torch); False: TF / pytorch-fid
  mixed_7c_pool: str = 'avg'  # Mixed_7c's pool tower; 'max' in pytorch-fid's FIDInceptionE_2
  drop_rate: float = 0.5  # before fc, in training (torchvision 0.5, timm 0.0)
  global_pool: str = 'avg'  # 'avg', 'max' or 'avgmax'
  image_size: int = 299  # the canonical size; any size >= 75 works
  in_channels: int = 3
  dtype: Any = jnp.float32  # compute dtype; parameters and BatchNorm statistics stay float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image_batch(x, model='inception_v3', channels=self.in_channels, min_size=MIN_SIZE)
    if self.mixed_7c_pool not in ('avg', 'max'):
      raise ValueError(f"mixed_7c_pool must be 'avg' or 'max', got {self.mixed_7c_pool!r}.")
    # torch BatchNorm2d(eps=1e-3, momentum=0.1) == Flax momentum 0.9.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype)
    conv = functools.partial(ConvBlock, padding='VALID', norm=norm, dtype=self.dtype)
    avg = functools.partial(pooling.avg_pool, window=3, stride=1, padding=1, count_include_pad=self.count_include_pad)
    last_pool = (
        avg if self.mixed_7c_pool == 'avg' else functools.partial(pooling.max_pool, window=3, stride=1, padding=1)
    )

    if self.transform_input:
      x = preprocess.transform_input(x)
    x = x.astype(self.dtype)
    features = {}
    x = conv(32, (3, 3), (2, 2), name='Conv2d_1a_3x3')(x)  # 149x149x32
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)  # 147x147x32
    x = conv(64, (3, 3), padding='SAME', name='Conv2d_2b_3x3')(x)  # 147x147x64
    x = features['maxpool1'] = pooling.max_pool(x, 3, 2)  # 73x73x64
    x = conv(80, (1, 1), name='Conv2d_3b_1x1')(x)  # 73x73x80
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)  # 71x71x192
    x = features['maxpool2'] = pooling.max_pool(x, 3, 2)  # 35x35x192
    x = InceptionA(32, conv, avg, name='Mixed_5b')(x)  # 35x35x256
    x = InceptionA(64, conv, avg, name='Mixed_5c')(x)  # 35x35x288
    x = features['Mixed_5d'] = InceptionA(64, conv, avg, name='Mixed_5d')(x)  # 35x35x288
    x = InceptionB(conv, name='Mixed_6a')(x)  # 17x17x768
    x = InceptionC(128, conv, avg, name='Mixed_6b')(x)
    x = InceptionC(160, conv, avg, name='Mixed_6c')(x)
    x = InceptionC(160, conv, avg, name='Mixed_6d')(x)
    x = features['Mixed_6e'] = InceptionC(192, conv, avg, name='Mixed_6e')(x)  # 17x17x768
    aux = None
    if self.aux_logits and self.num_classes > 0:
      aux = InceptionAux(self.num_classes, conv, self.dtype, name='AuxLogits')(x).astype(jnp.float32)
    x = InceptionD(conv, name='Mixed_7a')(x)  # 8x8x1280
    x = InceptionE(conv, avg, name='Mixed_7b')(x)  # 8x8x2048
    x = features['Mixed_7c'] = InceptionE(conv, last_pool, name='Mixed_7c')(x)  # 8x8x2048

    x = features['pre_logits'] = pooling.global_pool(x, self.global_pool)  # 2048
    if aux is not None:
      features['aux_logits'] = aux
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    if self.num_classes:
      x = nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)
    return x.astype(jnp.float32), features


# pytorch-fid's `fid_inception_v3()`: the network behind its InceptionV3 feature extractor.
inception_v3_fid = functools.partial(
    InceptionV3, num_classes=1008, aux_logits=False, count_include_pad=False, mixed_7c_pool='max'
)
