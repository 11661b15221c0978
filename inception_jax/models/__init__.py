"""Inception networks as pure Flax linen modules, and a registry of them.

    from inception_jax import models
    model = models.create_model('mnist_inception')
    logits, features = model.apply(variables, images, train=False)
    model, variables = models.load_pretrained('inception_v3', 'torchvision')   # published weights, cached

Every model's `__call__(x, *, train)` takes NHWC images and returns `(logits, features)`:
float32 logits and a dict of named intermediate arrays whose keys depend only on the
model's configuration, never on `train`.
"""

from inception_jax.models.blocks import Conv, ConvBlock, InceptionBlock, check_image_batch
from inception_jax.models.googlenet import GoogLeNet
from inception_jax.models.inception_resnet_v2 import InceptionResnetV2
from inception_jax.models.inception_v3 import InceptionV3
from inception_jax.models.inception_v4 import InceptionV4
from inception_jax.models.mnist import MnistInception
from inception_jax.models.hub import list_pretrained, pretrained_weights
from inception_jax.models.pretrained import load_pretrained, save_pretrained
from inception_jax.models.registry import create_model, list_models

__all__ = [
    'Conv',
    'ConvBlock',
    'GoogLeNet',
    'InceptionBlock',
    'InceptionResnetV2',
    'InceptionV3',
    'InceptionV4',
    'MnistInception',
    'list_pretrained',
    'load_pretrained',
    'pretrained_weights',
    'save_pretrained',
    'check_image_batch',
    'create_model',
    'list_models',
]
