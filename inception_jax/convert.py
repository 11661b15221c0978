"""PyTorch state_dicts (torchvision, timm, pytorch-fid) -> Flax variables.

Our modules are named after the PyTorch ones, so a torch key maps to a Flax path by
replacing '.' with '/', after a family's renames (regular expressions on the module
path, for the few places where a Flax name reads better than a Sequential index):

    Mixed_5b.branch1x1.conv.weight   (O, I, kh, kw)  -> params/Mixed_5b/branch1x1/conv/kernel (kh, kw, I, O)
    Mixed_5b.branch1x1.bn.weight                     -> params/.../bn/scale
    Mixed_5b.branch1x1.bn.bias                       -> params/.../bn/bias
    Mixed_5b.branch1x1.bn.running_mean / running_var -> batch_stats/.../bn/mean / var
    fc.weight                        (out, in)       -> params/fc/kernel (in, out)

BatchNorm conventions differ too: Flax `momentum = 1 - torch_momentum` (torch 0.1 ->
Flax 0.9), and epsilon is a module setting (Inception's 1e-3), not a weight.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import flax
import numpy as np

_IGNORED_SUFFIXES = ('num_batches_tracked',)


def torch_to_flax(
    state_dict: Mapping[str, Any],
    template: Mapping[str, Any],
    renames: Sequence[tuple[str, str]] = (),
) -> tuple[dict[str, Any], list[str], list[str]]:
  """Fills `template` (Flax variables or their shapes) from a PyTorch `state_dict`.

  Returns (variables, missing, unexpected): Flax paths the state_dict did not provide
  and torch keys that matched nothing. A shape that does not match raises ValueError.
  """
  flat = {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(template)).items()}
  out: dict[str, np.ndarray] = {}
  unexpected = []
  for key, value in state_dict.items():
    if key.endswith(_IGNORED_SUFFIXES):
      continue
    module, _, name = key.rpartition('.')
    for pattern, replacement in renames:
      module = re.sub(pattern, replacement, module)
    module = module.replace('.', '/')
    target = _flax_path(module, name, flat)
    if target is None:
      unexpected.append(key)
      continue
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, 'detach') else value, dtype=np.float32)
    if array.ndim == 4:
      array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif array.ndim == 2 and target.endswith('/kernel'):
      array = array.T  # (out, in) -> (in, out)
    expected = tuple(flat[target].shape)
    if array.shape != expected:
      raise ValueError(f'{key}: shape {array.shape} (after transposing) does not fit {target} of shape {expected}.')
    out[target] = array
  missing = sorted(set(flat) - set(out))
  nested = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in out.items()})
  return nested, missing, unexpected


def _flax_path(module: str, name: str, flat: Mapping[str, Any]) -> str | None:
  candidates = {
      'weight': [f'params/{module}/kernel', f'params/{module}/scale'],
      'bias': [f'params/{module}/bias'],
      'running_mean': [f'batch_stats/{module}/mean'],
      'running_var': [f'batch_stats/{module}/var'],
  }.get(name, [])
  return next((c for c in candidates if c in flat), None)
