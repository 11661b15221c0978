"""What fixes a run: the resolved config, the record every checkpoint carries, and the resume check."""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from absl import logging


def resolve_config(config: ml_collections.ConfigDict, num_train_examples: int | None) -> ml_collections.ConfigDict:
  """A copy of `config` with its -1 sentinels derived (experiments/configs/default.py), the one place
  where that happens: steps, warmup, decay and evaluation steps from epochs of
  `num_train_examples` at global_batch_size, the learning rate by the linear scaling rule."""
  config = ml_collections.ConfigDict(config.to_dict())
  needs_epochs = [f for f in ('num_train_steps', 'warmup_steps') if config[f] == -1]
  if config.lr_decay_steps == -1 and config.lr_schedule == 'exponential':
    needs_epochs.append('lr_decay_steps')
  if config.eval_every_steps == -1 and config.eval_every_epochs > 0:
    needs_epochs.append('eval_every_steps')
  if needs_epochs and not num_train_examples:
    raise ValueError(f'{", ".join(needs_epochs)} must be given in steps: dataset {config.dataset!r} has no epochs.')
  steps = lambda epochs: max(round(epochs * num_train_examples / config.global_batch_size), 0)
  if config.num_train_steps == -1:
    config.num_train_steps = max(steps(config.num_epochs), 1)
  if config.warmup_steps == -1:
    config.warmup_steps = steps(config.warmup_epochs)
  if 'lr_decay_steps' in needs_epochs:
    config.lr_decay_steps = max(steps(config.lr_decay_epochs), 1)
  if config.eval_every_steps == -1:
    config.eval_every_steps = max(steps(config.eval_every_epochs), 1) if config.eval_every_epochs > 0 else 0
  if config.learning_rate == -1:
    config.learning_rate = config.base_learning_rate * config.global_batch_size / config.base_batch_size
  return config


# Fields that say how a run is operated, not what it computes: a resume may change them freely.
OPERATIONAL_FIELDS = frozenset(
    {
        'data_dir',
        'manual_dir',
        'eval_split',
        'eval_batch_size',
        'eval_crop_fraction',
        'eval_every_steps',
        'eval_every_epochs',
        'log_every_steps',
        'checkpoint_every_steps',
        'keep_checkpoints',
        'async_checkpoints',
        'resume_from_step',
        'allow_config_change',
        'steps_per_loop',
        'num_devices',
        'shard_params',
        'shard_min_size',
        'compilation_cache_dir',
        'eval_ema',
    }
)

# Fields added after runs began to record their configs, each with the value that does what
# runs did before it: a record without one had that value.
NEW_FIELDS = {'grad_clip_norm': 0.0, 'ema_decay': 0.0, 'ema_warmup': False}


class ConfigChangedError(ValueError):
  """A resume under a config that would continue a different run."""


def run_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{dotted field: value} of every field of a resolved config that fixes what the run computes
  (its data stream, model and optimization), as JSON values: every checkpoint records it."""

  def flat(tree, prefix=''):
    for name, value in tree.items():
      if isinstance(value, dict):
        yield from flat(value, f'{prefix}{name}.')
      elif f'{prefix}{name}' not in OPERATIONAL_FIELDS:
        yield f'{prefix}{name}', value

  return json.loads(json.dumps(dict(flat(config.to_dict())), default=str))


# Fields that choose only where a run starts: a resume reads its checkpoint instead (a moved weights file).
START_FIELDS = frozenset({'pretrained'})

# Fields that set only how long a run trains: a resume may change them, and the learning-rate
# schedule then follows the new length.
LENGTH_FIELDS = frozenset({'num_train_steps', 'num_epochs'})


def allowed_changes(config: ml_collections.ConfigDict) -> frozenset[str]:
  """The fields config.allow_config_change names (comma-separated), each checked to be one a resume compares."""
  names = frozenset(n.strip() for n in config.allow_config_change.split(',') if n.strip())
  unknown = sorted(names - run_record(config).keys())
  if unknown:
    raise ValueError(
        f'allow_config_change names {unknown[0]!r}, which is not a field a resume compares: name the fields to let '
        'change, comma-separated, as a refused resume lists them (e.g. --config.allow_config_change=seed,learning_rate).'
    )
  return names


def check_resume(saved: dict[str, Any] | None, current: dict[str, Any], step: int, allowed: frozenset[str]) -> None:
  """Refuses (ConfigChangedError) to resume the checkpoint of `step`, recorded as `saved`, under a
  config whose run_record differs in a field that is neither a length field nor `allowed`; logs
  the changes it lets through. `saved` None: a checkpoint from before run records, resumed with a warning."""
  if saved is None:
    logging.warning(
        'The checkpoint of step %d predates run records: its config cannot be compared with this one.', step
    )
    return
  saved = NEW_FIELDS | saved
  unset = '(unset)'
  differ = sorted(
      k for k in saved.keys() | current.keys() if saved.get(k, unset) != current.get(k, unset) and k not in START_FIELDS
  )
  what = lambda fields: ', '.join(
      f'{k} (checkpoint {saved.get(k, unset)!r}, now {current.get(k, unset)!r})' for k in fields
  )
  refused = [k for k in differ if k not in LENGTH_FIELDS | allowed]
  if refused:
    listed = what(refused[:4]) + (f' and {len(refused) - 4} more' if len(refused) > 4 else '')
    raise ConfigChangedError(
        f'The checkpoint of step {step} was written under another config: {listed}. Resuming would continue a '
        'different run: run with the values it was written with, use a new --workdir, or pass '
        f'--config.allow_config_change={",".join(refused)} to take the change knowingly.'
    )
  if length := [k for k in differ if k in LENGTH_FIELDS]:
    logging.info('Resuming step %d with %s; the learning-rate schedule follows the new length.', step, what(length))
  if knowing := [k for k in differ if k not in LENGTH_FIELDS]:
    logging.warning('Resuming step %d under a changed config, as allow_config_change says: %s.', step, what(knowing))


def check_config(config) -> None:
  """Refuses fields a run cannot start with (ValueError naming the field), before any data is read
  (num_train_steps -1 is derived from the epochs later)."""
  if config.num_train_steps <= 0 and config.num_train_steps != -1:
    raise ValueError(f'num_train_steps must be positive, got {config.num_train_steps}.')
  if not 0 <= config.ema_decay < 1:
    raise ValueError(f'ema_decay must lie in [0, 1) (0: off), got {config.ema_decay}.')
  if config.grad_clip_norm < 0:
    raise ValueError(f'grad_clip_norm must be 0 (off) or positive, got {config.grad_clip_norm}.')
  for field in (
      'global_batch_size',
      'eval_batch_size',
      'log_every_steps',
      'checkpoint_every_steps',
      'keep_checkpoints',
      'steps_per_loop',
  ):
    if config[field] <= 0:
      raise ValueError(f'{field} must be positive, got {config[field]}.')
  allowed_changes(config)
