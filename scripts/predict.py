"""Classify images with pretrained weights, and optionally save their embeddings.

    python -m scripts.predict cat.jpg dog.png --model=inception_v3 --pretrained=torchvision
    python -m scripts.predict images/*.jpg --model=inception_v3 --pretrained=tf_in1k --embed=features.npy

Prints each image's top-5 ImageNet classes (probability, index, name; torchvision's class
names). --pretrained is a tag of the model's published weights (downloaded and converted once,
then read from ~/.cache/inception_jax), a PyTorch file or a converted folder. --embed writes
the pre-logits features, one row per image in the order given, as a float32 .npy file.
Errors (an unreadable image, unknown weights, offline with nothing cached) are one line on
stderr and exit status 1.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
from absl import app, flags

from inception_jax import classify, compilation_cache, npz

_MODEL = flags.DEFINE_string('model', 'inception_v3', 'A model with published weights (models.list_pretrained()).')
_PRETRAINED = flags.DEFINE_string(
    'pretrained', None, "Weights: a tag ('torchvision', 'tf_in1k', ...; default the model's first), a file or a folder."
)
_TOP = flags.DEFINE_integer('top', 5, 'Classes printed per image.')
_EMBED = flags.DEFINE_string('embed', None, 'Write the pre-logits features of the images here (.npy).')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Images per step.')
_COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache_dir',
    compilation_cache.AUTO,
    "Compiled programs kept for the next run: 'auto' is $JAX_COMPILATION_CACHE_DIR, else "
    "~/.cache/inception_jax/jax; '' turns it off.",
)


def _save_atomically(path: str, array: np.ndarray) -> None:
  """np.save to a temporary file in the same folder, then renamed: whole or not at all."""
  fd, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix='.npy')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.save(f, array)
    npz.make_readable(temporary)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def main(argv) -> int:
  files = argv[1:]
  if not files:
    raise app.UsageError('Usage: python -m scripts.predict IMAGE... [--model=NAME] [--pretrained=TAG|PATH]')
  compilation_cache.enable(_COMPILATION_CACHE.value)
  try:
    if _EMBED.value and not os.access(os.path.dirname(os.path.abspath(_EMBED.value)), os.W_OK):
      raise ValueError(f'--embed={_EMBED.value}: its folder does not exist or cannot be written.')
    classifier = classify.Classifier(_MODEL.value, _PRETRAINED.value, batch_size=_BATCH.value)
    probabilities, embeddings = classifier(files)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  for file, p in zip(files, probabilities):
    print(file)
    for probability, index, name in classify.top_k(p, _TOP.value):
      print(f'  {probability:.4f}  {index:4d}  {name}')
  if _EMBED.value:
    try:
      _save_atomically(_EMBED.value, embeddings.astype(np.float32))
    except OSError as e:
      print(f'error: cannot write --embed={_EMBED.value}: {e.strerror or e}', file=sys.stderr)
      return 1
    print(f'wrote {_EMBED.value}: {embeddings.shape[0]} x {embeddings.shape[1]} float32')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
