"""GoogLeNet ("Going deeper with convolutions", Szegedy et al., 2014), as seed 002 builds it,
and with torchvision's layout so torchvision's weights load.

    layout='paper' (seed 002)                     layout='torchvision'
    conv1 7x7/2, 64              112x112x64       conv1 7x7/2, 64           112x112x64
    max pool 3x3/2, pad 1        56x56x64         max pool 3x3/2, ceil      56x56x64
                                                  conv2 1x1, 64             56x56x64
    conv2 3x3, 192               56x56x192        conv3 3x3, 192            56x56x192
    max pool 3x3/2, pad 1        28x28x192        max pool 3x3/2, ceil      28x28x192
    inception3a, 3b              28x28x480        (same, "5x5" towers 3x3)
    max pool 3x3/2, pad 1        14x14x480        max pool 3x3/2, ceil      14x14x480
    inception4a  -> aux1         14x14x512
    inception4b, 4c, 4d -> aux2  14x14x528
    inception4e                  14x14x832
    max pool 3x3/2, pad 1        7x7x832          max pool 2x2/2, ceil      7x7x832
    inception5a, 5b              7x7x1024
    global pool, dropout 0.4, fc 1000             (dropout 0.2 in torchvision's builder)

Every convolution is conv -> BatchNorm (eps 1e-3) -> ReLU; `use_batchnorm=False` gives the
2014 original, biased convolutions and no normalization (the paper's local response
normalization is left out, as the seed leaves it). The seed also drops the paper's 1x1
reduction before the stem's 3x3 convolution; `stem_reduce=True` puts it back.

Auxiliary heads (after 4a and 4d): average pool, 1x1 conv 128, fc1 1024 + ReLU, dropout
0.7, fc2. torchvision pools adaptively to 4x4; the paper pools 5x5/3, which gives the 4x4
that fc1 is sized for at 224x224 only, so here the 5x5/3 pool (its window clipped to small
maps) is followed by an adaptive pool to 4x4: a no-op at 224, and one set of weights for
every input size. torchvision flattens the 4x4x128 map channel-first (NCHW) before fc1;
both layouts do the same, so fc1 weights carry over unchanged.

The aux heads run in evaluation too (their logits are features like any other), so the
output structure never depends on `train`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from inception_jax import preprocess
from inception_jax.models import pooling
from inception_jax.models.blocks import ConvBlock, InceptionBlock, check_image_batch

ModuleDef = Any

MIN_SIZE = 15  # torchvision's ceil-mode pools leave a 1x1 map after maxpool3 from 15x15 up

# The paper's table: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
WIDTHS = {
    'inception3a': (64, 96, 128, 16, 32, 32),
    'inception3b': (128, 128, 192, 32, 96, 64),
    'inception4a': (192, 96, 208, 16, 48, 64),
    'inception4b': (160, 112, 224, 24, 64, 64),
    'inception4c': (128, 128, 256, 24, 64, 64),
    'inception4d': (112, 144, 288, 32, 64, 64),
    'inception4e': (256, 160, 320, 32, 128, 128),
    'inception5a': (256, 160, 320, 32, 128, 128),
    'inception5b': (384, 192, 384, 48, 128, 128),
}


class GoogLeNetAux(nn.Module):
  """An auxiliary classifier: pool to 4x4, 1x1 conv 128, fc1 1024 + ReLU, dropout, fc2."""

  num_classes: int
  conv: ModuleDef
  dropout: ModuleDef  # nn.Dropout with its rate and `deterministic` set by the caller
  paper_pool: bool = False  # 5x5/3 average pool before the adaptive one
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # 14x14x512 (aux1) or 14x14x528 (aux2) at 224x224
    if self.paper_pool:
      window = (min(5, x.shape[1]), min(5, x.shape[2]))
      x = nn.avg_pool(x, window, strides=(3, 3), padding='VALID')
    x = pooling.adaptive_avg_pool(x, 4)  # 4x4
    x = self.conv(128, (1, 1), name='conv')(x)  # 4x4x128
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's channel-first flatten: 2048
    x = nn.relu(nn.Dense(1024, dtype=self.dtype, name='fc1')(x))
    x = self.dropout()(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='fc2')(x)


class GoogLeNet(nn.Module):
  """GoogLeNet. `__call__(x, *, train)` -> (logits, features).

  `features`: 'conv1', 'stem' (after the stem's last conv), 'inception3b', 'inception4e',
  'inception5b' (maps), 'pre_logits' (pooled 1024) and, when the model has aux heads
  (`aux_logits` and `num_classes > 0`), 'aux1' and 'aux2' logits (float32).
  With `num_classes=0` the logits are the pooled features (after dropout, as timm).
  """

  num_classes: int = 1000
  aux_logits: bool = True
  layout: str = 'paper'  # 'paper' (seed 002) or 'torchvision' (its weights load)
  use_batchnorm: bool = True  # False: the 2014 paper's biased convolutions (layout='paper' only)
  stem_reduce: bool | None = None  # 1x1 conv before the stem's 3x3; None: torchvision yes, paper (seed) no
  transform_input: bool = False  # torchvision's: ImageNet-normalized input -> [-1, 1] (preprocess.transform_input)
  drop_rate: float = 0.4  # before fc, in training (torchvision's builder uses 0.2)
  aux_drop_rate: float = 0.7
  global_pool: str = 'avg'  # 'avg', 'max' or 'avgmax'
  image_size: int = 224  # the canonical size; any size >= 15 works
  in_channels: int = 3
  dtype: Any = jnp.float32  # compute dtype; parameters and BatchNorm statistics stay float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image_batch(x, model='googlenet', channels=self.in_channels, min_size=MIN_SIZE)
    if self.layout not in ('paper', 'torchvision'):
      raise ValueError(f"GoogLeNet layout must be 'paper' or 'torchvision', got {self.layout!r}.")
    torchvision = self.layout == 'torchvision'
    if torchvision and not self.use_batchnorm:
      raise ValueError(
          "layout='torchvision' has BatchNorm after every convolution; use_batchnorm=False needs layout='paper'."
      )
    stem_reduce = torchvision if self.stem_reduce is None else self.stem_reduce

    # torch BatchNorm2d(eps=1e-3, momentum=0.1) == Flax momentum 0.9.
    norm = None
    if self.use_batchnorm:
      norm = functools.partial(
          nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype
      )
    conv = functools.partial(ConvBlock, norm=norm, dtype=self.dtype)
    if torchvision:
      pool = functools.partial(pooling.max_pool, stride=2, ceil_mode=True)
    else:
      pool = functools.partial(pooling.max_pool, stride=2, padding=1)
    block = functools.partial(InceptionBlock, conv=conv, kernel_size_5x5=3 if torchvision else 5)

    if self.transform_input:
      x = preprocess.transform_input(x)
    x = x.astype(self.dtype)
    features = {}
    x = conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name='conv1')(x)  # 112x112x64
    features['conv1'] = x
    x = pool(x, 3)  # 56x56x64
    if stem_reduce:
      x = conv(64, (1, 1), name='conv2')(x)
      x = conv(192, (3, 3), name='conv3')(x)  # 56x56x192
    else:
      x = conv(192, (3, 3), name='conv2')(x)  # 56x56x192
    features['stem'] = x
    x = pool(x, 3)  # 28x28x192

    with_aux = self.aux_logits and self.num_classes > 0
    aux = functools.partial(
        GoogLeNetAux,
        self.num_classes,
        conv,
        functools.partial(nn.Dropout, self.aux_drop_rate, deterministic=not train),
        paper_pool=not torchvision,
        dtype=self.dtype,
    )
    for name in ('inception3a', 'inception3b'):
      x = block(*WIDTHS[name], name=name)(x)  # 28x28x256, 28x28x480
    features['inception3b'] = x
    x = pool(x, 3)  # 14x14x480
    aux_outputs = {}
    for name in ('inception4a', 'inception4b', 'inception4c', 'inception4d', 'inception4e'):
      x = block(*WIDTHS[name], name=name)(x)  # 14x14x512, 512, 512, 528, 832
      if with_aux and name in ('inception4a', 'inception4d'):
        key = 'aux1' if name == 'inception4a' else 'aux2'
        aux_outputs[key] = aux(name=key)(x).astype(jnp.float32)
    features['inception4e'] = x
    x = pool(x, 2) if torchvision else pool(x, 3)  # 7x7x832
    for name in ('inception5a', 'inception5b'):
      x = block(*WIDTHS[name], name=name)(x)  # 7x7x832, 7x7x1024
    features['inception5b'] = x

    x = pooling.global_pool(x, self.global_pool)
    features['pre_logits'] = x  # 1024
    features.update(aux_outputs)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    if self.num_classes:
      x = nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)
    return x.astype(jnp.float32), features
