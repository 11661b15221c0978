"""Converted weights on disk: an Orbax checkpoint of Flax variables that knows its model.

    python -m scripts.convert_weights --source=torchvision --model=inception_v3 \\
        inception_v3_google-0cc3c7bd.pth /tmp/inception_v3
    model, variables = models.load_pretrained('inception_v3', '/tmp/inception_v3')
    logits, features = model.apply(variables, images, train=False)

The checkpoint holds {'params', 'batch_stats'} (float32) and, as Orbax custom metadata,
the registered model name and the fields that differ from its defaults, so loading
rebuilds the model the weights belong to.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from inception_jax.models.registry import create_model


def save_pretrained(path: str | os.PathLike, name: str, config: dict[str, Any], variables: Any, **metadata) -> None:
  """Writes `variables` of model `name` (built with `config`) to a new Orbax checkpoint at `path`.

  Orbax writes to a temporary folder and renames it when complete, so an interrupted save
  leaves no half-written checkpoint; an existing `path` is an error.
  """
  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(
        os.path.abspath(path),
        flax.core.unfreeze(variables),
        custom_metadata={'model': name, 'config': config, **metadata},
    )
    checkpointer.wait_until_finished()
  finally:
    checkpointer.close()


def load_pretrained(name: str, path: str | os.PathLike, **overrides):
  """(model, variables) from a checkpoint written by `scripts.convert_weights` / `save_pretrained`.

  `overrides` change fields that leave the variables' shapes alone (`dtype`, `drop_rate`,
  `global_pool`, ...). Variables the model needs but the checkpoint lacks raise ValueError;
  ones it has but the model does not use are logged and dropped.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ValueError(
        f'{path} is not a converted checkpoint (a directory). Convert PyTorch weights first: '
        f'python -m scripts.convert_weights --source=... --model={name} SRC {path}'
    )
  checkpointer = ocp.StandardCheckpointer()
  try:
    metadata = checkpointer.metadata(path).custom_metadata or {}
    saved_name = metadata.get('model')
    if saved_name is not None and saved_name != name:
      raise ValueError(f'{path} holds weights for {saved_name!r}, not {name!r}.')
    model = create_model(name, **{**metadata.get('config', {}), **overrides})
    restored = checkpointer.restore(path)
  finally:
    checkpointer.close()

  template = _template(model)
  flat = {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(restored).items()}
  missing = sorted(set(template) - set(flat))
  unexpected = sorted(set(flat) - set(template))
  if missing:
    raise ValueError(
        f'{path} lacks {len(missing)} variable(s) that {name} needs: {", ".join(missing[:10])}'
        + (' ...' if len(missing) > 10 else '')
    )
  if unexpected:
    logging.warning('%s: %d variable(s) not used by %s: %s', path, len(unexpected), name, ', '.join(unexpected[:10]))
  for key, shape in template.items():
    if tuple(flat[key].shape) != shape:
      raise ValueError(f'{path}: {key} has shape {tuple(flat[key].shape)}, {name} needs {shape}.')
  variables = flax.traverse_util.unflatten_dict(
      {tuple(k.split('/')): jnp.asarray(flat[k], jnp.float32) for k in template}
  )
  return model, variables


def _template(model) -> dict[str, tuple[int, ...]]:
  x = jnp.zeros((1, model.image_size, model.image_size, model.in_channels))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  return {'/'.join(k): tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes)).items()}
