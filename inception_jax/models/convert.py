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

`WEIGHT_SOURCES` says, per registered model and weight source, which model fields give the
layout the weights were trained in and which renames map their keys; `convert_state_dict`
reads the rest (classes, aux heads) off the state_dict itself:

    state_dict = torch_files.load_state_dict('inception_v3_google-0cc3c7bd.pth')
    model, variables, missing, unexpected = convert_state_dict('inception_v3', state_dict, source='torchvision')
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from inception_jax.models.registry import create_model

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


# Renames (regular expressions on the torch module path) where a Flax name reads better than
# a Sequential index. torchvision's GoogLeNet Inception block: indices onto our branch names.
GOOGLENET_TORCHVISION_RENAMES = (
    (r'\.branch1\.', '.branch1x1.'),
    (r'\.branch2\.0\.', '.branch3x3_reduce.'),
    (r'\.branch2\.1\.', '.branch3x3.'),
    (r'\.branch3\.0\.', '.branch5x5_reduce.'),
    (r'\.branch3\.1\.', '.branch5x5.'),
    (r'\.branch4\.1\.', '.branch_pool.'),
)
# timm's Inception v4 / Inception-ResNet-v2: a tower's Sequential index joins its name
# (`repeat.3.branch1.0.conv` is our `repeat/3/branch1_0/conv`), as do v4's stem features.
TIMM_BRANCH_RENAME = (r'\b(branch\d)\.(\d+)\b', r'\1_\2')
INCEPTION_V4_TIMM_RENAMES = ((r'^features\.(\d+)\b', r'features_\1'), TIMM_BRANCH_RENAME)
INCEPTION_RESNET_V2_TIMM_RENAMES = (TIMM_BRANCH_RENAME,)


@dataclasses.dataclass(frozen=True)
class WeightSource:
  """How one family of published weights maps onto a registered model."""

  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # model fields of the weights' layout
  renames: Sequence[tuple[str, str]] = ()  # for torch_to_flax
  classifier: str = 'fc'  # the module whose weight's rows count the classes
  aux_key: str | None = None  # a key found only in files with aux heads
  untrained: str | None = None  # regex of keys of aux heads the file ships untrained: left out unless asked for


# Model name -> source -> WeightSource. The first source listed is the default.
WEIGHT_SOURCES: dict[str, dict[str, WeightSource]] = {
    'googlenet': {
        # torchvision's builder: transform_input=True, dropout 0.2, and no aux heads unless
        # asked for, since the file's are untrained.
        'torchvision': WeightSource(
            {'layout': 'torchvision', 'transform_input': True, 'drop_rate': 0.2},
            GOOGLENET_TORCHVISION_RENAMES,
            aux_key='aux1.fc2.weight',
            untrained=r'aux\d\.',
        ),
    },
    'inception_v3': {
        'torchvision': WeightSource({'transform_input': True}, aux_key='AuxLogits.fc.weight'),
        'timm': WeightSource({'drop_rate': 0.0}, aux_key='AuxLogits.fc.weight'),
    },
    'inception_v3_fid': {'pytorch_fid': WeightSource()},
    # timm's `*.tf_in1k` files have 1000 classes; older TF ports with 1001 (background
    # first) load as they are, the class count being read off the file.
    'inception_v4': {'timm': WeightSource(renames=INCEPTION_V4_TIMM_RENAMES, classifier='last_linear')},
    'inception_resnet_v2': {'timm': WeightSource(renames=INCEPTION_RESNET_V2_TIMM_RENAMES, classifier='classif')},
}


def convert_state_dict(name: str, state_dict: Mapping[str, Any], *, source: str | None = None, **overrides):
  """A registered model in the layout of `source`'s weights, and those weights as Flax variables.

  Returns (model, variables, missing, unexpected). `num_classes` and `aux_logits` follow the
  state_dict unless given in `overrides` (untrained aux heads are dropped unless
  `aux_logits=True`, as torchvision's GoogLeNet builder does).
  """
  if name not in WEIGHT_SOURCES:
    raise ValueError(
        f'No weight conversion for model {name!r}. Convertible models: {", ".join(sorted(WEIGHT_SOURCES))}.'
    )
  sources = WEIGHT_SOURCES[name]
  source = source or next(iter(sources))
  if source not in sources:
    raise ValueError(f'Model {name!r} converts weights from {", ".join(sources)}, not {source!r}.')
  spec = sources[source]
  fields = dict(spec.overrides)
  classifier = state_dict.get(f'{spec.classifier}.weight')
  if classifier is not None:
    fields['num_classes'] = int(np.shape(classifier)[0])
  if spec.aux_key is not None:
    fields['aux_logits'] = spec.aux_key in state_dict and spec.untrained is None
  fields.update(overrides)
  model = create_model(name, **fields)
  if spec.untrained is not None and not model.aux_logits:
    state_dict = {k: v for k, v in state_dict.items() if not re.match(spec.untrained, k)}
  template = jax.eval_shape(
      lambda: model.init(
          jax.random.PRNGKey(0), jnp.zeros((1, model.image_size, model.image_size, model.in_channels)), train=False
      )
  )
  variables, missing, unexpected = torch_to_flax(state_dict, template, spec.renames)
  return model, variables, missing, unexpected


def model_config(model) -> dict[str, Any]:
  """The JSON-serializable fields of `model` (numbers, strings, tuples of them) that differ from
  their defaults: what a checkpoint records to rebuild it."""
  out = {}
  for field in dataclasses.fields(model):
    value = getattr(model, field.name)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
      value = tuple(value)
    elif field.name in ('parent', 'name') or not isinstance(value, (bool, int, float, str, type(None))):
      continue
    if field.default is dataclasses.MISSING or value != field.default:
      out[field.name] = value
  return out
