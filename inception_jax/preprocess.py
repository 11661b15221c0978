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

The training and evaluation crops (`random_resized_crop`, `resize_center_crop`) run in the
TFDS input pipeline (data.InceptionInput) on one TensorFlow image at a time.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
FID_SIZE = 299
MAX_IMAGE_PIXELS = 2**25  # 33.5 M pixels (8K UHD fits): 96 MiB decoded; read and resized images stay within it


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


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a set of published weights wants its images: torchvision's and timm's evaluation transform.

      image -> shorter side resized to `resize_size` (PIL, `interpolation`) -> central
      `input_size` x `input_size` crop -> [0, 1] -> (x - mean) / std per channel

  `resize_size=None` resizes the whole image to `input_size` x `input_size` instead, as
  pytorch-fid's wrapper does: torch's `F.interpolate` (bilinear, no antialiasing), no crop.
  """

  input_size: int
  resize_size: int | None
  interpolation: str  # 'bilinear' or 'bicubic'
  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  @property
  def crop_fraction(self) -> float:
    """input_size / resize_size (timm's crop_pct; the input pipeline's eval_crop_fraction)."""
    return self.input_size / (self.resize_size or self.input_size)

  @property
  def normalization(self) -> str:
    """The config's name for (mean, std): 'imagenet' or 'inception'."""
    known = {(IMAGENET_MEAN, IMAGENET_STD): 'imagenet', (INCEPTION_MEAN, INCEPTION_STD): 'inception'}
    return known[(self.mean, self.std)]

  def transform(self, image) -> np.ndarray:
    """One image (a PIL image, or an HWC uint8 array, grey or RGB) -> (input_size, input_size, 3)
    float32, as torchvision's `Resize(resize_size) + CenterCrop(input_size) + ToTensor + Normalize`."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    if not isinstance(image, Image.Image):
      image = np.asarray(image)
      if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(
            f'expected an HWC uint8 image with 1 or 3 channels (or a PIL image), got {image.dtype} {image.shape}.'
        )
      image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    image = image.convert('RGB')
    resample = {'bilinear': Image.Resampling.BILINEAR, 'bicubic': Image.Resampling.BICUBIC}[self.interpolation]
    w, h = image.size
    if self.resize_size is None:
      x = resize_bilinear(jnp.asarray(np.asarray(image, np.float32) / 255.0)[None], self.input_size)[0]
      return (np.asarray(x) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
    else:  # torchvision's Resize(int): the shorter side to resize_size, the longer side truncated
      short, long = min(w, h), max(w, h)
      new_long = int(self.resize_size * long / short)
      if self.resize_size * new_long > MAX_IMAGE_PIXELS:
        size = f'{self.resize_size}x{new_long}' if w <= h else f'{new_long}x{self.resize_size}'
        raise ValueError(
            f'a {w}x{h} image resized to {size} is {self.resize_size * new_long:,} pixels, over the budget of '
            f'{MAX_IMAGE_PIXELS:,}; crop it to a less extreme aspect ratio first.'
        )
      image = image.resize((self.resize_size, new_long) if w <= h else (new_long, self.resize_size), resample)
      w, h = image.size
      top, left = int(round((h - self.input_size) / 2.0)), int(round((w - self.input_size) / 2.0))
      image = image.crop((left, top, left + self.input_size, top + self.input_size))
    x = np.asarray(image, np.float32) / 255.0
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return tf


def random_resized_crop(image, size: int, seed, *, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)):
  """The Inception crop (GoogLeNet's paper; torchvision's RandomResizedCrop): a random box
  covering `area_range` of the image with width/height in `aspect_ratio_range`, resized to
  size x size. When 10 draws find no such box, the whole image is used.

  One HWC image (uint8, or floats in [0, 1]) as a TF tensor -> float32 in [0, 1].
  `seed`: a stateless TF seed (two integers), so a crop is a function of it.
  """
  tf = _tf()
  image = tf.image.convert_image_dtype(image, tf.float32)
  whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
  begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image),
      whole,
      seed=seed,
      min_object_covered=area_range[0],
      aspect_ratio_range=aspect_ratio_range,
      area_range=area_range,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
  )
  crop = tf.slice(image, begin, box)
  return tf.image.resize(crop, (size, size), method='bilinear', antialias=True)


def resize_center_crop(image, size: int, crop_fraction: float = 0.875):
  """The evaluation crop: shorter side resized to size / crop_fraction, then the central
  size x size (torchvision's Resize(256) + CenterCrop(224) at size 224).

  One HWC image (uint8, or floats in [0, 1]) as a TF tensor -> float32 in [0, 1].
  """
  tf = _tf()
  image = tf.image.convert_image_dtype(image, tf.float32)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = (size / crop_fraction) / tf.reduce_min(hw)
  new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), size)
  image = tf.image.resize(image, new_hw, method='bilinear', antialias=True)
  top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
  return image[top : top + size, left : left + size]
