"""The configs: one schema (default.py) that every experiment derives from, the overrides the
README and docs/training.md show, through the real flag parser, values derived from the batch
size, and the command line's one-line errors for a config file that fails."""

import subprocess
import sys
from unittest import mock

import pytest
from absl import flags
from ml_collections import config_flags

from conftest import ROOT
from experiments.configs import default, finetune, imagenet_inception, mnist_inception
from inception_jax import train

MNIST = 'experiments/configs/mnist_inception.py'
IMAGENET = 'experiments/configs/imagenet_inception.py'
# Every override the README and docs/training.md show, with the field it sets and the value expected.
OVERRIDES = [
    ('--config.global_batch_size=256', 'global_batch_size', 256),
    ('--config.learning_rate=2e-3', 'learning_rate', 2e-3),
    ('--config.num_devices=4', 'num_devices', 4),
    ('--config.shard_params=True', 'shard_params', True),
    ('--config.shard_min_size=1024', 'shard_min_size', 1024),
    ('--config.data_dir=/shared/tensorflow_datasets', 'data_dir', '/shared/tensorflow_datasets'),
    ('--config.manual_dir=/data/imagenet', 'manual_dir', '/data/imagenet'),
    ('--config.resume_from_step=3', 'resume_from_step', 3),
    ('--config.dataset=imagenette', 'dataset', 'imagenette'),
]


def parse(*argv):
  """As the experiments' main parses them (config_flags reads sys.argv when the flag is defined)."""
  values = flags.FlagValues()
  with mock.patch.object(sys, 'argv', ['prog', *argv]):
    config = config_flags.DEFINE_config_file('config', MNIST, flag_values=values, lock_config=True)
    values(sys.argv)
  return config.value


@pytest.mark.parametrize(
    'config_file', [MNIST, f'{IMAGENET}:googlenet', f'{IMAGENET}:inception_v3', f'{IMAGENET}:synthetic']
)
@pytest.mark.parametrize('override, field, value', OVERRIDES, ids=[o[1] for o in OVERRIDES])
def test_every_readme_override_works_on_every_experiment(config_file, override, field, value):
  assert parse(f'--config={config_file}', override)[field] == value


def test_readme_variants_and_mnist_only_overrides():
  assert parse(f'--config={MNIST}:paper').num_train_steps == 20_000
  assert parse(f'--config={MNIST}', '--config.lr_multipliers.fc1=0.1').lr_multipliers.fc1 == 0.1
  with pytest.raises(Exception, match='learning_rat'):
    parse(f'--config={MNIST}', '--config.learning_rat=0.1')


@pytest.mark.parametrize(
    'get_config',
    [
        mnist_inception.get_config,
        lambda: imagenet_inception.get_config('googlenet'),
        lambda: imagenet_inception.get_config('inception_v3'),
        lambda: finetune.get_config('inception_v3.tf_in1k'),
    ],
)
def test_every_config_has_exactly_the_default_schema(get_config):
  schema = {k for k in default.get_config() if k != 'model'}
  fields = {k for k in get_config() if k != 'model'}
  assert fields == schema  # variants change values, never add hidden fields
  assert {'name', 'dtype'} <= set(get_config().model)


def test_steps_warmup_and_learning_rate_follow_the_batch_size():
  images = 1_281_167  # ImageNet's training split

  def at(batch, variant='googlenet', **fields):
    config = imagenet_inception.get_config(variant)
    config.update(global_batch_size=batch, **fields)
    return train.resolve_config(config, images)

  big, small = at(1024), at(256)
  assert big.num_train_steps == round(90 * images / 1024) and small.num_train_steps == round(90 * images / 256)
  assert (big.warmup_steps, small.warmup_steps) == (round(5 * images / 1024), round(5 * images / 256))
  assert big.learning_rate == pytest.approx(0.4) and small.learning_rate == pytest.approx(0.1)
  assert big.eval_every_steps == round(5 * images / 1024)
  v3 = at(1024, 'inception_v3')
  assert v3.learning_rate == pytest.approx(0.045 * 1024 / 1600)
  assert v3.lr_decay_steps == round(2 * images / 1024)
  assert at(256, learning_rate=0.3).learning_rate == 0.3  # an explicit value stays
  # The MNIST recipe gives steps and evaluates only at the end.
  mnist = train.resolve_config(mnist_inception.get_config(), 60_000)
  assert (mnist.num_train_steps, mnist.warmup_steps, mnist.learning_rate, mnist.eval_every_steps) == (470, 30, 2e-3, 0)
  synthetic = imagenet_inception.get_config('synthetic')
  synthetic.num_train_steps = -1
  with pytest.raises(ValueError, match="num_train_steps must be given in steps: dataset 'synthetic' has no epochs"):
    train.resolve_config(synthetic, None)


def command(*argv, experiment='mnist_inception'):
  """Runs `python -m experiments.EXPERIMENT ARGV` as a user does: its exit status, stdout and stderr's lines."""
  run = subprocess.run(
      [sys.executable, '-m', f'experiments.{experiment}', *argv], cwd=ROOT, capture_output=True, text=True
  )
  return run.returncode, run.stdout, run.stderr.splitlines()


def test_variants_load_from_the_command_line():
  status, out, err = command(f'--config={MNIST}:paper', '--print_config')
  assert (status, err) == (0, []) and 'num_train_steps: 20000' in out
  status, out, err = command('--print_config', experiment='imagenet_inception')  # its default: :googlenet
  assert (status, err) == (0, []) and 'name: googlenet' in out


def test_an_unknown_variant_is_one_line_naming_the_known_ones():
  line = next(i for i, text in enumerate((ROOT / MNIST).read_text().splitlines(), 1) if 'Unknown variant' in text)
  assert command(f'--config={MNIST}:bogus')[::2] == (
      2,
      [
          f'error: config file {MNIST}, line {line}: '
          "Unknown variant 'bogus' of mnist_inception's config; known: 'paper'. (--verbosity=1 shows the traceback)"
      ],
  )


# A config file's text, the --config variant, and the line it fails at with its one-line message.
BROKEN_CONFIGS = {
    'name_error': (
        'def get_config():\n  return undefined_name\n',
        '',
        2,
        "NameError: name 'undefined_name' is not defined",
    ),
    'syntax_error': ('def get_config(:\n  pass\n', '', 1, 'SyntaxError: invalid syntax'),
    'import_error': ('import not_a_module\n', '', 1, "ModuleNotFoundError: No module named 'not_a_module'"),
    'key_error': ('def get_config():\n  return {}["model"]\n', '', 2, "KeyError: 'model'"),  # not an override's
    # ml_collections keeps an OSError until the config is used.
    'os_error': (
        'def get_config():\n  open("/no/such/file.json")\n',
        '',
        2,
        "[Errno 2] No such file or directory: '/no/such/file.json'",
    ),
    'no_variants': (
        'import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict()\n',
        ':paper',
        None,
        'TypeError: get_config() takes 0 positional arguments but 1 was given',
    ),
}


@pytest.mark.parametrize('text, variant, line, message', BROKEN_CONFIGS.values(), ids=BROKEN_CONFIGS)
def test_a_broken_config_file_is_one_line_naming_its_file_and_line(tmp_path, text, variant, line, message):
  path = tmp_path / 'broken.py'
  path.write_text(text)
  where = f'{path}, line {line}' if line else path
  assert command(f'--config={path}{variant}', f'--workdir={tmp_path}')[::2] == (
      2,
      [f'error: config file {where}: {message} (--verbosity=1 shows the traceback)'],
  )


def test_verbosity_1_shows_a_config_files_traceback(tmp_path):
  path = tmp_path / 'broken.py'
  path.write_text(BROKEN_CONFIGS['name_error'][0])
  for config in (path, f'{MNIST}:bogus'):
    status, _, err = command(f'--config={config}', f'--workdir={tmp_path}', '--verbosity=1')
    assert status != 0 and 'Traceback (most recent call last):' in err, err
    assert any(line.startswith(f'  File "{str(config).split(":")[0]}", line ') for line in err), err
