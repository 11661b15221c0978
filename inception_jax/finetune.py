"""Starting a run from pretrained weights: the model those weights belong to with a classifier for
the dataset's classes, the variables it keeps, and which parameters train.

    model, pretrained = finetune.create_model(config, num_classes)   # config.pretrained: a tag, file or folder
    variables = finetune.merge(fresh_variables, pretrained)          # inside the jitted initialization
    tx = finetune.freeze(tx, model) if config.trainable == 'head' else tx

The classifier is every parameter whose shape follows `num_classes` (fc, and an aux head's
last layer), found by building the model at two class counts, so no model lists it by hand.
A dataset with the weights' own class count keeps their classifier, as timm does.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from inception_jax import models
from inception_jax.models import convert

TRAINABLE = ('all', 'head')


def check_config(config: ml_collections.ConfigDict, *, resuming: bool) -> None:
  """Refuses, before any data is read, what create_model would: an unknown `trainable`, a head
  to train alone without weights, and (unless the run resumes, which reads no weights)
  `pretrained` naming neither published weights nor a file or folder."""
  if config.trainable not in TRAINABLE:
    raise ValueError(f'Unknown trainable {config.trainable!r}; use {" or ".join(map(repr, TRAINABLE))}.')
  if not config.pretrained and config.trainable != 'all':
    raise ValueError("trainable='head' needs pretrained weights to freeze: set config.pretrained.")
  if config.pretrained and not resuming:
    models.pretrained.check_weights(config.model.name, config.pretrained)


def create_model(
    config: ml_collections.ConfigDict, num_classes: int, built: dict[str, Any] | None = None
) -> tuple[Any, dict[str, Any] | None]:
  """(model, pretrained variables to start from, flat {'params/a/b': array}, or None).

  Without config.pretrained: the registered model with config.model's fields. With it: the
  model the weights were made for (its layout, transform_input, aux head, ...), then
  `num_classes` and config.model's fields; the pretrained classifier is left out when its
  shape no longer fits. `built`: the fields of the model a checkpoint was written for
  (convert.model_config), which a resume rebuilds without reading the weights again.
  """
  check_config(config, resuming=built is not None)
  overrides = {k: v for k, v in config.model.items() if k != 'name'}
  if 'dtype' in overrides:
    overrides['dtype'] = jnp.dtype(overrides['dtype'])
  if not config.pretrained:
    return models.create_model(config.model.name, num_classes=num_classes, **overrides), None
  if built is not None:  # JSON's lists back to the tuples they were (Flax modules are hashed)
    built = {k: tuple(v) if isinstance(v, list) else v for k, v in built.items()}
    return models.create_model(config.model.name, **{**built, **overrides, 'num_classes': num_classes}), None
  published, variables = models.load_pretrained(config.model.name, config.pretrained)
  fields = {**convert.model_config(published), **overrides, 'num_classes': num_classes}
  model = models.create_model(config.model.name, **fields)
  classifier = classifier_paths(model)
  template = _flat(_abstract_variables(model))
  keep, fresh = {}, []
  for path, value in _flat(variables).items():
    if path not in template:
      continue
    if value.shape == template[path].shape:
      keep[path] = value
    elif path.split('/', 1)[1] in classifier:
      fresh.append(path)
    else:
      raise ValueError(f'{config.pretrained}: {path} has shape {value.shape}, the model needs {template[path].shape}.')
  fresh += sorted(set(template) - set(keep) - set(fresh))
  logging.info(
      'Starting from %s weights %s: %d arrays kept, %d new (%s).',
      config.model.name,
      config.pretrained,
      len(keep),
      len(fresh),
      ', '.join(fresh[:6]) + (' ...' if len(fresh) > 6 else ''),
  )
  return model, keep


def merge(variables: dict[str, Any], pretrained: dict[str, Any] | None) -> dict[str, Any]:
  """`variables` (a fresh initialization) with the arrays of `pretrained` in their place."""
  if not pretrained:
    return variables
  flat = {path: pretrained.get(path, value) for path, value in _flat(variables).items()}
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


@functools.cache  # create_model and freeze ask for the same model's (Flax modules hash by their fields)
def classifier_paths(model) -> frozenset[str]:
  """'a/b/kernel' paths of the parameters whose shapes follow num_classes."""
  if not model.num_classes:
    raise ValueError(f'{type(model).__name__} with num_classes=0 has no classifier to fine-tune.')
  shapes = lambda m: {k: v.shape for k, v in _flat(_abstract_variables(m).get('params', {})).items()}
  now, other = shapes(model), shapes(model.clone(num_classes=model.num_classes + 1))
  return frozenset(path for path, shape in now.items() if other.get(path) != shape)


def freeze(tx: optax.GradientTransformation, model) -> optax.GradientTransformation:
  """`tx` for the classifier's parameters; every other parameter gets no update at all (and no
  optimizer state): it stays bit for bit what it was."""
  classifier = classifier_paths(model)

  def labels(params):
    return flax.traverse_util.path_aware_map(
        lambda path, _: 'train' if '/'.join(path) in classifier else 'frozen', params
    )

  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)


def _abstract_variables(model):
  x = jnp.zeros((1, model.image_size, model.image_size, model.in_channels))
  return flax.core.unfreeze(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False)))


def _flat(tree) -> dict[str, Any]:
  return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}
