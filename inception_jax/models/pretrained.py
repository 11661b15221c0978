"""Pretrained weights in one call, and converted weights on disk.

    model, variables = models.load_pretrained('inception_v3', 'torchvision')   # published, cached
    model, variables = models.load_pretrained('inception_v3', 'model.safetensors', source='timm')
    model, variables = models.load_pretrained('inception_v3', '/tmp/inception_v3')  # convert_weights' folder
    logits, features = model.apply(variables, images, train=False)

A converted folder is an Orbax checkpoint holding {'params', 'batch_stats'} (float32) and, as
Orbax custom metadata, the registered model name and the fields that differ from its
defaults, so loading rebuilds the model the weights belong to.

Flax modules hold no variables, so the call that gives pretrained weights returns both,
(model, variables), rather than `create_model` growing a `pretrained=` flag.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from inception_jax import files, torch_files
from inception_jax.models import convert, hub
from inception_jax.models.registry import create_model


def save_pretrained(path: str | os.PathLike, name: str, config: dict[str, Any], variables: Any, **metadata) -> None:
  """Writes `variables` of model `name` (built with `config`) to a new Orbax checkpoint at `path`.

  The folder appears whole or not at all (files.atomic_folder); an existing `path` is an error
  (FileExistsError).
  """
  checkpointer = ocp.StandardCheckpointer()
  try:
    with files.atomic_folder(os.fspath(path)) as partial:
      checkpointer.save(
          partial, flax.core.unfreeze(variables), custom_metadata={'model': name, 'config': config, **metadata}
      )
      checkpointer.wait_until_finished()
  finally:
    checkpointer.close()


def load_pretrained(name: str, weights: str | os.PathLike | None = None, *, source: str | None = None, **overrides):
  """(model, variables) of model `name` with pretrained weights.

  `weights`: a tag of `name`'s published weights (`list_pretrained()`; None: the first, e.g.
  'torchvision' for inception_v3), downloaded and converted once, then read from the cache;
  a PyTorch file (.pth/.pt/.bin/.safetensors, in `source`'s layout: torchvision, timm or
  pytorch_fid; default the model's first); or a folder from `scripts.convert_weights` /
  `save_pretrained`.

  `overrides` change fields that leave the variables' shapes alone (`dtype`, `drop_rate`,
  `global_pool`, ...). Variables the model needs but the weights lack raise ValueError;
  ones they have but the model does not use are logged and dropped.
  """
  check_weights(name, weights)
  if weights is None or weights in hub.WEIGHTS.get(name, {}):  # a tag first, whatever folder has its name
    return load_published(hub.pretrained_weights(name, weights), **overrides)
  if os.path.isdir(weights):
    return _load_converted(name, os.path.abspath(weights), overrides)
  return _convert_file(name, os.fspath(weights), source, overrides)


def check_weights(name: str, weights: str | os.PathLike | None) -> None:
  """ValueError, one line, unless `weights` is a tag of `name`'s published weights (or None), or
  a file or folder that exists: checked before any work."""
  if weights is None or weights in hub.WEIGHTS.get(name, {}) or os.path.isdir(weights) or os.path.isfile(weights):
    return
  if os.sep in os.fspath(weights) or '.' in os.path.basename(weights) or os.path.exists(weights):
    raise ValueError(f'{weights}: no such file or folder (weights for {name}: a tag, a file or a converted folder).')
  hub.pretrained_weights(name, weights)  # an unknown tag: names the tags


def load_published(weights: hub.Weights, *, hint: str = '', **overrides):
  """(model, variables) of a registry entry: from the converted cache, else downloaded (once;
  `hint` says how to pass a local copy when that fails), converted and cached."""
  known = hub.known_sha256(weights)
  if known and os.path.isdir(folder := hub.converted_dir(weights, known)):
    return _load_converted(weights.model, folder, overrides)
  if not hint:
    source = (
        '' if weights.source == next(iter(convert.WEIGHT_SOURCES[weights.model])) else f', source={weights.source!r}'
    )
    hint = (
        f'put it at {os.path.join(hub.cache_dir(), weights.file)} (then the tag finds it), or pass its path: '
        f"load_pretrained({weights.model!r}, 'PATH/{os.path.basename(weights.url)}'{source})"
    )
  path = hub.download(weights.url, weights.file, weights.sha256, hint=hint)
  # The folder is named after the hash the file was checked against, else (a copy put in the
  # cache by hand, unchecked) the file's own: a replaced file is never served another's variables.
  sha256 = hub.known_sha256(weights) or hub.file_sha256(path)
  model, variables = _convert_file(weights.model, path, weights.source, {})
  # The variables are here: a cache that cannot take them costs the next call a conversion, not this one's result.
  folder = hub.converted_dir(weights, sha256)
  if problem := files.room_for(folder, sum(x.nbytes for x in jax.tree.leaves(variables))):
    logging.warning(
        'Converted %s but did not keep it in %s: %s; the next call converts again.',
        path,
        os.path.dirname(folder),
        problem,
    )
  elif jax.process_count() == 1:  # Orbax writes with every process of a multi-process run; each converts its own
    try:
      _save_atomically(
          folder, weights.model, model, variables, source=weights.source, source_file=weights.url, source_sha256=sha256
      )
    except Exception as e:  # pylint: disable=broad-except  # Orbax's and TensorStore's errors of a failed write
      logging.warning('Converted %s but could not keep it (%s); the next call converts again.', path, _first_line(e))
  if not overrides:
    return model, variables
  return _checked(weights.model, {**convert.model_config(model), **overrides}, variables, path)


def _convert_file(name: str, path: str, source: str | None, overrides: dict[str, Any]):
  model, variables, missing, unexpected = convert.convert_state_dict(
      name, torch_files.load_state_dict(path), source=source
  )
  if missing:
    raise ValueError(
        f'{path} lacks {len(missing)} variable(s) that {name} needs: {", ".join(missing[:5])}'
        + (' ...' if len(missing) > 5 else '')
        + f' (is it {name} in {source or next(iter(convert.WEIGHT_SOURCES[name]))} layout?)'
    )
  if unexpected:
    logging.warning('%s: %d key(s) not used by %s: %s', path, len(unexpected), name, ', '.join(unexpected[:10]))
  variables = jax.tree.map(jnp.asarray, variables)
  if not overrides:
    return model, variables
  return _checked(name, {**convert.model_config(model), **overrides}, variables, path)


def _save_atomically(folder: str, name: str, model, variables, **metadata) -> None:
  """Writes the converted cache entry, whole or not at all; a process that loses the race to
  another keeps the other's (the same conversion)."""
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  try:
    save_pretrained(folder, name, convert.model_config(model), variables, **metadata)
  except FileExistsError:
    if not os.path.isdir(folder):
      raise


def _load_converted(name: str, path: str, overrides: dict[str, Any]):
  checkpointer = ocp.StandardCheckpointer()
  try:
    metadata = checkpointer.metadata(path).custom_metadata or {}
    restored = checkpointer.restore(path)
  except Exception as e:  # pylint: disable=broad-except  # Orbax's and TensorStore's errors for a damaged folder
    raise ValueError(
        f'cannot read converted weights {path} ({_first_line(e)})'
        + ('; delete the folder to download and convert again.' if path.startswith(hub.cache_dir()) else '.')
    ) from None
  finally:
    checkpointer.close()
  if metadata.get('model', name) != name:
    raise ValueError(f"{path} holds weights for {metadata['model']!r}, not {name!r}.")
  config = {k: tuple(v) if isinstance(v, list) else v for k, v in metadata.get('config', {}).items()}  # JSON's lists
  return _checked(name, {**config, **overrides}, restored, path)


def _checked(name: str, config: dict[str, Any], restored, path: str):
  """`name` built with `config`, and `restored` variables that fit it (float32)."""
  model = create_model(name, **config)
  template = _template(model)
  flat = {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(restored)).items()}
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


def _first_line(e: Exception) -> str:
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
