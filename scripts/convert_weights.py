"""PyTorch weights (torchvision, timm, pytorch-fid) -> an Orbax checkpoint of Flax variables.

    python -m scripts.convert_weights --source=torchvision --model=googlenet googlenet-1378be20.pth /tmp/googlenet
    python -m scripts.convert_weights --source=torchvision --model=inception_v3 inception_v3_google-0cc3c7bd.pth /tmp/inception_v3
    python -m scripts.convert_weights --source=timm --model=inception_v3 model.safetensors /tmp/inception_v3_timm
    python -m scripts.convert_weights --source=pytorch_fid --model=inception_v3_fid pt_inception-2015-12-05-6726825d.pth /tmp/fid

Reads .pth/.pt/.bin (either torch.save format) and .safetensors without PyTorch. Prints the
keys that were missing or unexpected; missing ones are an error (exit status 1) and nothing
is written. Then: `model, variables = inception_jax.models.load_pretrained(NAME, DST)`.
"""

import os
import sys

from absl import app, flags

from inception_jax import files, torch_files
from inception_jax.models import convert, pretrained

_SOURCE = flags.DEFINE_string('source', None, 'Where the weights come from: torchvision, timm or pytorch_fid.')
_MODEL = flags.DEFINE_string('model', None, f'Model to convert to: {", ".join(sorted(convert.WEIGHT_SOURCES))}.')


def main(argv):
  try:
    if _MODEL.value is None:
      raise ValueError(f'--model is required: one of {", ".join(sorted(convert.WEIGHT_SOURCES))}.')
    if len(argv) != 3:
      raise ValueError('give SRC and DST: python -m scripts.convert_weights --model=NAME [--source=SOURCE] SRC DST')
    src, dst = argv[1], argv[2]
    files.check_output(dst, 'DST', inputs=[src])
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  sources = convert.WEIGHT_SOURCES.get(_MODEL.value, {})
  source = _SOURCE.value or next(iter(sources), None)
  if source not in sources:  # checked before the file is read
    problem = (
        f'model {_MODEL.value!r} converts weights from {", ".join(sources)}, not {source!r}'
        if sources
        else f'no weight conversion for model {_MODEL.value!r}; convertible: {", ".join(sorted(convert.WEIGHT_SOURCES))}'
    )
    print(f'error: {problem}.', file=sys.stderr)
    return 1
  try:
    state_dict = torch_files.load_state_dict(src)
    model, variables, missing, unexpected = convert.convert_state_dict(_MODEL.value, state_dict, source=source)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{src}: {len(state_dict)} tensors -> {_MODEL.value} {convert.model_config(model)}')
  for key in unexpected:
    print(f'unexpected (ignored): {key}')
  for key in missing:
    print(f'missing: {key}')
  if missing:
    print(f'error: {len(missing)} variable(s) of {_MODEL.value} are not in {src}; nothing written.', file=sys.stderr)
    return 1
  try:
    pretrained.save_pretrained(
        dst, _MODEL.value, convert.model_config(model), variables, source=source, source_file=os.path.basename(src)
    )
  except OSError as e:  # a full disk, say: nothing is left at DST
    print(f'error: cannot write {dst}: {e.strerror or e}; nothing written.', file=sys.stderr)
    return 1
  print(f'wrote {dst} ({len(unexpected)} unexpected, 0 missing)')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
