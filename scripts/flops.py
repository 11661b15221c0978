"""Per-layer output shapes, parameters and multiply-adds of a registered model or one Inception block.

python -m scripts.flops --model=mnist_inception
python -m scripts.flops --model=mnist_inception --json
# Seed 000's arithmetic for GoogLeNet's inception (3a) on a 28x28x192 input:
python -m scripts.flops --block=64,96,128,16,32,32 --in_channels=192 --image_size=28
python -m scripts.flops --block=64,96,128,16,32,32 --in_channels=192 --image_size=28 --naive
"""

import dataclasses
import json
import sys

from absl import app, flags

from inception_jax import analysis, models

_MODEL = flags.DEFINE_string('model', None, f'A registered model: {", ".join(models.list_models())}.')
_BLOCK = flags.DEFINE_list(
    'block',
    None,
    'Instead of a model, one Inception block with these six widths: ' '#1x1,#3x3reduce,#3x3,#5x5reduce,#5x5,poolproj.',
)
_NAIVE = flags.DEFINE_bool('naive', False, 'With --block: the naive module (no 1x1 reductions or pool projection).')
_IN_CHANNELS = flags.DEFINE_integer('in_channels', None, "Input channels; default: the model's own.")
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, "Input height and width; default: the model's own.")
_JSON = flags.DEFINE_bool('json', False, 'Print JSON instead of a table.')


def main(argv) -> int:
  try:
    name, model, input_shape, kwargs = _what(argv)
    layers = analysis.count(model, input_shape, **kwargs)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  total_params, total_macs = sum(l.params for l in layers), sum(l.macs for l in layers)
  if _JSON.value:
    print(
        json.dumps(
            {
                'model': name,
                'input_shape': list(input_shape),
                'params': total_params,
                'macs': total_macs,
                'layers': [dataclasses.asdict(l) for l in layers],
            }
        )
    )
  else:
    print(f'{name} on a {"x".join(map(str, input_shape))} input (multiply-adds per image)')
    print(analysis.format_table(layers))
  return 0


def _what(argv):
  """(name, model, input shape, apply's keyword arguments) from the flags, each checked (ValueError)."""
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}: flops takes only flags.')
  if (_MODEL.value is None) == (_BLOCK.value is None):
    raise ValueError('give exactly one of --model=NAME or --block=W1,...,W6.')
  for flag in (_IN_CHANNELS, _IMAGE_SIZE):
    if flag.value is not None and flag.value < 1:
      raise ValueError(f'--{flag.name} must be positive, got {flag.value}.')
  if _MODEL.value is not None:
    model = models.create_model(_MODEL.value)
    size = _IMAGE_SIZE.value or model.image_size
    return _MODEL.value, model, (size, size, _IN_CHANNELS.value or model.in_channels), {'train': False}
  if len(_BLOCK.value) != 6 or not all(w.strip().lstrip('-').isdigit() for w in _BLOCK.value):
    raise ValueError(f'--block takes six comma-separated widths, got {",".join(_BLOCK.value)}.')
  widths = [int(w) for w in _BLOCK.value]
  if min(widths) < 1:
    raise ValueError(f'--block: widths must be positive, got {",".join(_BLOCK.value)}.')
  if _IN_CHANNELS.value is None or _IMAGE_SIZE.value is None:
    raise ValueError('--block needs --in_channels and --image_size.')
  name = f'inception_block({",".join(map(str, widths))}){" naive" if _NAIVE.value else ""}'
  model = models.InceptionBlock(*widths, reduce=not _NAIVE.value)
  return name, model, (_IMAGE_SIZE.value, _IMAGE_SIZE.value, _IN_CHANNELS.value), {}


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
