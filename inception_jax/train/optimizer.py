"""The optimizers and learning-rate schedules of the configs (Adam, SGD, TF1's RMSProp)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup from 0 to config.learning_rate, then 'cosine' (to 0 at the last step),
  'exponential' (x config.lr_decay_rate every config.lr_decay_steps, the Inception papers')
  or 'constant'."""
  warmup, peak = config.warmup_steps, config.learning_rate
  if config.lr_schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup, decay_steps=max(config.num_train_steps, warmup + 1), end_value=0.0
    )
  if config.lr_schedule == 'exponential':
    return optax.warmup_exponential_decay_schedule(
        0.0, peak, warmup, transition_steps=config.lr_decay_steps, decay_rate=config.lr_decay_rate, staircase=True
    )
  if config.lr_schedule == 'constant':
    if warmup == 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  raise ValueError(f"Unknown lr_schedule {config.lr_schedule!r}; use 'cosine', 'exponential' or 'constant'.")


def create_optimizer(config) -> optax.GradientTransformation:
  """'adam', 'sgd' (momentum, optionally Nesterov) or 'rmsprop' (TensorFlow 1's, as the
  Inception v3 paper trains: decay 0.9, epsilon 1.0 inside the square root, the mean
  square starting at 1), with the schedule above.

  config.weight_decay > 0 adds weight_decay * w to the gradient of every kernel (arrays of
  rank 2 and up; not biases or BatchNorm scales), as L2 regularization does.
  config.grad_clip_norm > 0 then scales that gradient down to at most this global norm (the
  Inception v3 paper clips at 2.0), before the optimizer sees it.
  config.lr_multipliers, e.g. {'fc1': 0.1}, scales the steps of a top-level module's
  parameters (its learning rate, for any of the three optimizers).
  """
  lr = learning_rate_schedule(config)
  if config.optimizer == 'adam':
    tx = optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
  elif config.optimizer == 'sgd':
    tx = optax.sgd(lr, momentum=config.momentum, nesterov=config.nesterov)
  elif config.optimizer == 'rmsprop':
    tx = optax.rmsprop(
        lr,
        decay=config.rmsprop_decay,
        eps=config.rmsprop_eps,
        momentum=config.momentum,
        eps_in_sqrt=True,
        initial_scale=1.0,
    )
  else:
    raise ValueError(f"Unknown optimizer {config.optimizer!r}; use 'adam', 'sgd' or 'rmsprop'.")
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  weight_decay = config.weight_decay
  if weight_decay:
    kernels = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=kernels), tx)
  for module, factor in config.lr_multipliers.items():
    if factor != 1:
      tx = optax.chain(tx, optax.masked(optax.scale(factor), functools.partial(_module_mask, module)))
  return tx


def _module_mask(module: str, params) -> Any:
  """True for every parameter of the top-level submodule `module` (config.lr_multipliers)."""
  if module not in params:
    raise ValueError(
        f'config.lr_multipliers names {module!r}, which is not a top-level module of the model; '
        f'its modules are {sorted(params)}.'
    )
  return {name: jax.tree.map(lambda _, keep=name == module: keep, subtree) for name, subtree in params.items()}
