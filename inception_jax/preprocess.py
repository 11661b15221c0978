"""Input normalization for the Inception networks, side by side. Images are NHWC floats in [0, 1].

Which one a set of weights expects:

    weights                                  input                         helper
    TF-trained Inception (v3, v4, IRv2,      [-1, 1]: 2x - 1               normalize_inception
      timm's *.tf_in1k, pytorch-fid's FID)     (mean 0.5, std 0.5)
    torchvision GoogLeNet / Inception v3,    ImageNet mean/std, then       normalize_imagenet, then the
      built with transform_input=True          the model's transform_input   model's transform_input=True
      (torchvision's builders set it)          turns it into [-1, 1]          (= transform_input below)
    torchvision ResNets etc., timm *.tv_*    ImageNet mean/std             normalize_imagenet
    pytorch-fid's InceptionV3 wrapper        bilinear resize to 299x299,   fid_inputs
                                               then [-1, 1]

`transform_input` is the trap: torchvision's GoogLeNet and Inception v3 weights came from
TensorFlow and expect [-1, 1] inputs, but torchvision feeds every model ImageNet-normalized
images, so those two models undo that normalization inside (per channel,
x * std / 0.5 + (mean - 0.5) / 0.5). Feeding [-1, 1] inputs to a model with
transform_input=True, or ImageNet-normalized ones to a model without it, silently costs
accuracy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
FID_SIZE = 299


def normalize(x, mean, std):
  """(x - mean) / std per channel, on the last axis."""
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def normalize_imagenet(x):
  """[0, 1] -> ImageNet mean/std normalization (torchvision's `transforms.Normalize`)."""
  return normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def normalize_inception(x):
  """[0, 1] -> [-1, 1], the TensorFlow Inception normalization (mean 0.5, std 0.5)."""
  return normalize(x, INCEPTION_MEAN, INCEPTION_STD)


def transform_input(x):
  """torchvision's `_transform_input`: ImageNet-normalized -> [-1, 1]-normalized, per channel.

  Equal to normalize_inception(unnormalized x), written as torchvision writes it.
  """
  mean, std = jnp.asarray(IMAGENET_MEAN, x.dtype), jnp.asarray(IMAGENET_STD, x.dtype)
  return x * (std / 0.5) + (mean - 0.5) / 0.5


def resize_bilinear(x, size: int | tuple[int, int]):
  """torch's `F.interpolate(x, size, mode='bilinear', align_corners=False)` (no antialiasing)."""
  h, w = (size, size) if isinstance(size, int) else size
  return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), method='bilinear', antialias=False)


def fid_inputs(x):
  """What pytorch-fid's `InceptionV3` (resize_input=True, normalize_input=True) does to [0, 1]
  images before its network: bilinear resize to 299x299, then 2x - 1."""
  return 2 * resize_bilinear(x, FID_SIZE) - 1
