"""Classify images with pretrained weights, and optionally save their embeddings.

    python -m scripts.predict cat.jpg dog.png --model=inception_v3 --pretrained=torchvision
    python -m scripts.predict images/*.jpg --model=inception_v3 --pretrained=tf_in1k --embed=features.npy

Prints each image's top-5 ImageNet classes (probability, index, name; torchvision's class
names). --pretrained is a tag of the model's published weights (downloaded and converted once,
then read from ~/.cache/inception_jax), a PyTorch file or a converted folder. --embed writes
the pre-logits features, one row per image in the order given, as a float32 .npy file: a new
file, never one of the images (--overwrite replaces an existing file).
Errors (an unreadable image, unknown weights, offline with nothing cached) are one line on
stderr and exit status 1.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags

from inception_jax import classify, compilation_cache, files

_MODEL = flags.DEFINE_string('model', 'inception_v3', 'A model with published weights (models.list_pretrained()).')
_PRETRAINED = flags.DEFINE_string(
    'pretrained', None, "Weights: a tag ('torchvision', 'tf_in1k', ...; default the model's first), a file or a folder."
)
_TOP = flags.DEFINE_integer('top', 5, 'Classes printed per image.')
_EMBED = flags.DEFINE_string('embed', None, 'Write the pre-logits features of the images here (.npy).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace the --embed file if it exists.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Images per step.')
_COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache_dir',
    compilation_cache.AUTO,
    "Compiled programs kept for the next run: 'auto' is $JAX_COMPILATION_CACHE_DIR, else "
    "~/.cache/inception_jax/jax; '' turns it off.",
)


def main(argv) -> int:
  images = argv[1:]
  try:
    if not images:
      raise ValueError(
          'give at least one image: python -m scripts.predict IMAGE... [--model=NAME] [--pretrained=TAG|PATH]'
      )
    if _TOP.value < 1:
      raise ValueError(f'--top must be positive, got {_TOP.value}.')
    if _EMBED.value:
      files.check_output(
          _EMBED.value, '--embed', overwrite=_OVERWRITE.value, overwrite_flag='--overwrite', inputs=images
      )
    compilation_cache.enable(_COMPILATION_CACHE.value)
    classifier = classify.Classifier(_MODEL.value, _PRETRAINED.value, batch_size=_BATCH.value)
    probabilities, embeddings = classifier(images)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  for file, p in zip(images, probabilities):
    print(file)
    for probability, index, name in classify.top_k(p, _TOP.value):
      print(f'  {probability:.4f}  {index:4d}  {name}')
  if _EMBED.value:
    try:
      with files.atomic(_EMBED.value, overwrite=_OVERWRITE.value) as f:
        np.save(f, embeddings.astype(np.float32))
    except OSError as e:
      print(f'error: cannot write --embed={_EMBED.value}: {e.strerror or e}', file=sys.stderr)
      return 1
    print(f'wrote {_EMBED.value}: {embeddings.shape[0]} x {embeddings.shape[1]} float32')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
