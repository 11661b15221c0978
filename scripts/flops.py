"""Per-layer output shapes, parameters and multiply-adds of a registered model or one Inception block.

python -m scripts.flops --model=mnist_inception
python -m scripts.flops --model=mnist_inception --json
# Seed 000's arithmetic for GoogLeNet's inception (3a) on a 28x28x192 input:
python -m scripts.flops --block=64,96,128,16,32,32 --in_channels=192 --image_size=28
python -m scripts.flops --block=64,96,128,16,32,32 --in_channels=192 --image_size=28 --naive
"""

import dataclasses
import json

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if (_MODEL.value is None) == (_BLOCK.value is None):
    raise app.UsageError('Give exactly one of --model=NAME or --block=W1,...,W6.')
  if _BLOCK.value is not None:
    if len(_BLOCK.value) != 6 or _IN_CHANNELS.value is None or _IMAGE_SIZE.value is None:
      raise app.UsageError('--block takes six comma-separated widths and needs --in_channels and --image_size.')
    name = f'inception_block({",".join(_BLOCK.value)}){" naive" if _NAIVE.value else ""}'
    model = models.InceptionBlock(*map(int, _BLOCK.value), reduce=not _NAIVE.value)
    input_shape, kwargs = (_IMAGE_SIZE.value, _IMAGE_SIZE.value, _IN_CHANNELS.value), {}
  else:
    name = _MODEL.value
    model = models.create_model(name)
    size = _IMAGE_SIZE.value or model.image_size
    input_shape, kwargs = (size, size, _IN_CHANNELS.value or model.in_channels), {'train': False}
  layers = analysis.count(model, input_shape, **kwargs)
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


if __name__ == '__main__':
  app.run(main)
