"""The README and docs/ run as written: every `python -m` command in them goes through its own
command line's parser (flags, config files and variants, --config overrides), so a renamed flag
or field fails here, not for the reader; and the README's Python quick starts run, offline, from
a cache of generated weights."""

import contextlib
import importlib
import os
import re
import shlex
import sys
from unittest import mock

import conftest
import numpy as np
import pytest
import torch
from absl import flags
from ml_collections import config_flags
from PIL import Image

from conftest import ROOT
from experiments import main as experiments_main
from inception_jax import models
from inception_jax.models import convert, hub, pretrained
from scripts import chaos
from scripts.torch_refs import numpy_state_dict
from scripts.torch_refs import torchvision_inception as tv_inception

DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
# Run by CI itself (.ci/run installs, then runs the README's test command).
RUN_BY_CI = {'pytest'}


def doc_commands() -> dict[str, str]:
  """{command: 'file:line'} of every `python -m` command in the docs: the lines of code blocks
  (backslash continuations joined) and `inline code` (which may wrap within its paragraph)."""
  found = {}
  for path in DOCS:
    lines = path.read_text().splitlines() + ['']
    i, paragraph = 0, []
    while i < len(lines):
      line, start = lines[i], i
      if line.startswith('    ') and 'python -m ' in line:
        while line.rstrip().endswith('\\'):
          i += 1
          line = line.rstrip()[:-1] + ' ' + lines[i].strip()
        found.setdefault(line.strip(), f'{path.name}:{start + 1}')
      elif line.strip() and not line.startswith('    '):
        paragraph.append((start, line))
      else:
        text = ' '.join(l for _, l in paragraph)
        for command in re.findall(r'`([^`]*python -m [^`]+)`', text):
          found.setdefault(command, f'{path.name}:{paragraph[0][0] + 1}')
        paragraph = []
      i += 1
  return found


COMMANDS = doc_commands()


def split(command: str) -> tuple[str, list[str]]:
  """(module, arguments) of `[VAR=value ...] [/usr/bin/time -v] python -m MODULE ARGS [# comment]`;
  `[--flag]` (optional) counts as given, `...` (and so on) as nothing."""
  tokens = shlex.split(command, comments=True)
  while tokens and re.match(r'^[A-Z_]+=', tokens[0]) or tokens[:2] == ['/usr/bin/time', '-v']:
    tokens = tokens[2:] if tokens[0] == '/usr/bin/time' else tokens[1:]
  assert tokens[:2] == ['python', '-m'], command
  args = [re.sub(r'^\[(--[^\]]+)\]$', r'\1', t) for t in tokens[3:] if t != '...']
  return tokens[2], args


def parse_experiment(module: str, args: list[str]) -> None:
  """As experiments/main.py parses them: its flags, the config file and variant, the overrides."""
  experiment = importlib.import_module(module)
  values = flags.FlagValues()
  with mock.patch.object(sys, 'argv', [module, *args]):  # config_flags reads the overrides off sys.argv
    handles = experiments_main.define_flags(experiment.CONFIG, experiment.WORKDIR, values)
    leftover = values(sys.argv)
  assert leftover == [module], f'unexpected arguments {leftover[1:]}'
  assert handles.config.value.model.name  # the config file runs now


def parse_script(module: str, args: list[str]) -> None:
  script = importlib.import_module(module)
  if hasattr(script, 'parser'):  # argparse
    script.parser().parse_args(args)
    return
  values = flags.FlagValues()
  with mock.patch.object(sys, 'argv', [module, *args]):
    if module == 'scripts.chaos':
      chaos.define_flags(values)
    for flag in conftest.script_flags(script) if module != 'scripts.chaos' else ():
      if isinstance(flag, config_flags.config_flags._ConfigFlag):  # pylint: disable=protected-access
        config_flags.DEFINE_config_file(flag.name, flag.default, flag_values=values)  # reads its overrides
      else:
        values[flag.name] = flag
    try:
      leftover = values(sys.argv)
    finally:
      values.unparse_flags()
  if module == 'scripts.chaos' and '--' in args:  # the rest goes to the experiment
    parse_experiment('experiments.mnist_inception', args[args.index('--') + 1 :])
  del leftover  # positional arguments: paths the reader fills in


@pytest.mark.parametrize('command', sorted(COMMANDS), ids=[COMMANDS[c] for c in sorted(COMMANDS)])
def test_every_command_in_the_docs_parses(command):
  module, args = split(command)
  if module in RUN_BY_CI:
    return
  if module.startswith('experiments.'):
    parse_experiment(module, args)
  else:
    assert module.startswith('scripts.'), f'{COMMANDS[command]}: unknown module {module}'
    parse_script(module, args)


def test_a_renamed_flag_or_field_in_a_command_fails():
  with pytest.raises(flags.UnrecognizedFlagError):
    parse_script(*split('python -m scripts.predict cat.jpg --modle=inception_v3'))
  with pytest.raises(Exception, match='learning_rat'):
    parse_experiment(*split('python -m experiments.finetune --config.learning_rat=0.1'))
  with pytest.raises(SystemExit):  # argparse's exit
    with contextlib.redirect_stderr(open(os.devnull, 'w')):
      parse_script(*split('python -m scripts.benchmark_precision_recall --num_refs=5'))
  assert len(COMMANDS) > 30


def readme_python() -> list[str]:
  """The README's Python blocks: indented blocks that start with an import of jax or inception_jax."""
  blocks, block = [], None
  for line in (ROOT / 'README.md').read_text().splitlines() + ['']:
    if block is None and line.startswith(('    from inception_jax', '    import jax')):
      block = []
    if block is not None:
      if line and not line.startswith('    '):
        blocks.append('\n'.join(block))
        block = None
      else:
        block.append(line[4:])
  return blocks


def test_the_readmes_python_runs_offline_from_the_cache(tmp_path, monkeypatch):
  """The pretrained quick start as written, its weights (generated, in torchvision's layout)
  already converted in the cache, as after a first call with internet."""
  monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / 'cache'))
  torch.manual_seed(0)
  state = numpy_state_dict(tv_inception.Inception3(aux_logits=True))
  model, variables, missing, _ = convert.convert_state_dict('inception_v3', state, source='torchvision')
  assert not missing
  weights = hub.pretrained_weights('inception_v3', 'torchvision')
  pretrained._save_atomically(hub.converted_dir(weights, weights.sha256), 'inception_v3', model, variables)
  monkeypatch.setattr(hub, 'download', lambda *a, **k: pytest.fail('downloaded'))
  monkeypatch.chdir(tmp_path)
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)).save('cat.jpg')

  blocks = readme_python()
  assert blocks and any('load_pretrained' in b for b in blocks)
  for block in blocks:
    namespace = {}
    exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['embedding'].shape == (1, 2048)
  assert isinstance(namespace['model'], models.InceptionV3)
