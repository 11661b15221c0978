"""The registry of named models: `create_model(name, **fields)` and `list_models()`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn

from inception_jax.models.googlenet import GoogLeNet
from inception_jax.models.inception_resnet_v2 import InceptionResnetV2
from inception_jax.models.inception_v3 import InceptionV3, inception_v3_fid
from inception_jax.models.inception_v4 import InceptionV4
from inception_jax.models.mnist import MnistInception

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    'mnist_inception': MnistInception,
    'googlenet': GoogLeNet,  # seed 002 / the paper: true 5x5 kernels, BatchNorm, aux heads
    'googlenet_torchvision': functools.partial(
        GoogLeNet, layout='torchvision', transform_input=True, drop_rate=0.2, aux_logits=False
    ),
    'inception_v3': InceptionV3,
    'inception_v3_fid': inception_v3_fid,
    'inception_v4': InceptionV4,
    'inception_resnet_v2': InceptionResnetV2,
}


def list_models() -> list[str]:
  """Names accepted by `create_model`."""
  return sorted(_REGISTRY)


def create_model(name: str, **overrides) -> nn.Module:
  """Builds the registered model `name`, with any of its fields overridden."""
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}. Known models: {", ".join(list_models())}.')
  factory = _REGISTRY[name]
  cls = factory.func if isinstance(factory, functools.partial) else factory
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'Model {name!r} has no field(s) {unknown}. Its fields: {", ".join(sorted(fields))}.')
  return factory(**overrides)
