"""Classify and embed image files with pretrained weights (what `python -m scripts.predict` runs).

    classifier = Classifier('inception_v3', 'torchvision')
    probabilities, embeddings = classifier(['cat.jpg', 'dog.png'])    # (2, 1000), (2, 2048)
    for p in probabilities: print(top_k(p, 5))                         # [(0.53, 281, 'tabby'), ...]

Each file is read as a regular file with PIL (never anything that runs code; images over
metrics' pixel budget are refused before decoding) and preprocessed as its weights were
evaluated (`Weights.preprocessing`: resize, centre crop, mean/std).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import warnings

import jax
import numpy as np

from inception_jax import models
from inception_jax.metrics import sources
from inception_jax.models import hub
from inception_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
  """The 1,000 ImageNet class names in the order of the weights' logits (torchvision 0.29's
  `_IMAGENET_CATEGORIES`, where the two 'crane's and 'maillot's are told apart)."""
  text = importlib.resources.files('inception_jax.models').joinpath('imagenet_classes.txt').read_text('utf-8')
  return tuple(text.splitlines())


def load_image(path: str | os.PathLike) -> np.ndarray:
  """HWC uint8 RGB pixels of a regular file in a format PIL decodes itself (metrics.IMAGE_FORMATS);
  a damaged, foreign or oversized file is a one-line ValueError naming it."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with warnings.catch_warnings():
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)  # refused, with the budget named
    return sources.read_image(path)


class Classifier:
  """A model with pretrained weights and their preprocessing, applied to image files in batches.

  `weights`: a tag of the model's published weights, a PyTorch file or a converted folder
  (models.load_pretrained). A file or folder is preprocessed like the model's first published
  weights, at the normalization its model expects (ImageNet mean/std where it has
  transform_input, else [-1, 1]).
  """

  def __init__(self, model: str, weights: str | None = None, batch_size: int = 16):
    if batch_size < 1:
      raise ValueError(f'batch_size must be at least 1, got {batch_size}.')
    self.model, self.variables = models.load_pretrained(model, weights)
    if weights is not None and os.path.exists(weights):
      imagenet = getattr(self.model, 'transform_input', False)
      self.preprocessing = dataclasses.replace(
          hub.pretrained_weights(model).preprocessing,
          mean=IMAGENET_MEAN if imagenet else INCEPTION_MEAN,
          std=IMAGENET_STD if imagenet else INCEPTION_STD,
      )
    else:
      self.preprocessing = hub.pretrained_weights(model, weights).preprocessing
    self.batch_size = batch_size
    self._apply = jax.jit(self._forward)

  def _forward(self, variables, images):
    with jax.default_matmul_precision('float32'):  # full float32 on accelerators too
      logits, features = self.model.apply(variables, images, train=False)
    return jax.nn.softmax(logits), features['pre_logits']

  def __call__(self, files) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, classes), pre-logits embeddings (N, D)) of the image files, in order."""
    probabilities, embeddings = [], []
    for start in range(0, len(files), self.batch_size):
      batch = np.stack([self.preprocessing.transform(load_image(f)) for f in files[start : start + self.batch_size]])
      padded = np.concatenate([batch, np.zeros((self.batch_size - len(batch), *batch.shape[1:]), batch.dtype)])
      p, e = self._apply(self.variables, padded)  # one compiled shape
      probabilities.append(np.asarray(p)[: len(batch)])
      embeddings.append(np.asarray(e)[: len(batch)])
    return np.concatenate(probabilities), np.concatenate(embeddings)


def top_k(probabilities: np.ndarray, k: int = 5) -> list[tuple[float, int, str]]:
  """The k most likely classes of one image: (probability, index, ImageNet name or '')."""
  names = imagenet_classes() if probabilities.shape[-1] == 1000 else ()
  order = np.argsort(-probabilities, kind='stable')[:k]
  return [(float(probabilities[i]), int(i), names[i] if names else '') for i in order]
