"""The train state and the pure steps: one optimizer step, one evaluation batch, and scans of them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from inception_jax import finetune


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any  # BatchNorm statistics; {} for models without them
  opt_state: Any
  dropout_key: jax.Array  # dropout at step s uses fold_in(dropout_key, s)
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


class EMATrainState(TrainState):
  """A train state with an exponential moving average of {'params', 'batch_stats'}
  (config.ema_decay). A class of its own: a run without the average saves what it always saved."""

  ema: Any


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """The run's model (with config.pretrained, the one its weights belong to: finetune.create_model)."""
  return finetune.create_model(config, num_classes)[0]


def create_train_state(model, tx, image_shape, seed: int, pretrained=None, ema: bool = False) -> TrainState:
  """A fresh state from `seed` (parameters and dropout keys come from separate streams), with
  `pretrained` variables (finetune.create_model's) in place of the initialization's. `ema`:
  keep a moving average of the weights, starting from them (TF's and timm's start)."""
  params_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init({'params': params_key}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  variables = finetune.merge(flax.core.unfreeze(variables), pretrained)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  fields = dict(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      dropout_key=dropout_key,
      apply_fn=model.apply,
      tx=tx,
  )
  if ema:
    return EMATrainState(**fields, ema=jax.tree.map(jnp.copy, {'params': params, 'batch_stats': batch_stats}))
  return TrainState(**fields)


def initial_state(model, tx, image_shape, seed: int, sharding=None, pretrained=None, ema: bool = False) -> TrainState:
  """create_train_state as one compiled call, its arrays placed by `sharding` (a pytree of
  shardings, or None for the default device); `pretrained` arrays are its arguments.

  On CPU it compiles with LLVM at -O2 instead of XLA's default -O3: the threefry initializers
  are most of a model's compile time, and at -O2 they compile 1.6-2.4x quicker (a tiny MNIST
  network, widths (4, 8): 4.2 to 1.8 s; the default MNIST network 3.6 to 1.6 s; GoogLeNet 12.7
  to 7.9 s) into the same values, bit for bit (tests/test_train.py checks it; -O0 is 1 ulp off).
  """
  options = {'xla_backend_optimization_level': 2} if jax.default_backend() == 'cpu' else None
  init = lambda pretrained: create_train_state(model, tx, image_shape, seed, pretrained, ema)
  return jax.jit(init, out_shardings=sharding, compiler_options=options)(pretrained)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per example; the targets put 1 - label_smoothing on the label, the rest spread evenly."""
  logits = logits.astype(jnp.float32)
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def correct_top_k(logits, labels, k: int):
  """1 where the label is among the k highest logits (all of them when there are fewer)."""
  k = min(k, logits.shape[-1])
  return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    aux_loss_weight: float = 0.0,
    label_smoothing: float = 0.0,
    frozen_statistics: bool = False,
    ema_decay: float = 0.0,
    ema_warmup: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch; returns the new state and the batch's metrics.

  The losses of auxiliary classifiers (features whose key starts with 'aux') are added
  with `aux_loss_weight` each (GoogLeNet's paper: 0.3). BatchNorm normalizes with the
  statistics of the whole global batch, however many devices hold it: under jit the
  batch is one array (no per-device statistics, no axis_name). `frozen_statistics` runs the
  network as in evaluation (BatchNorm's running statistics, unchanged; no dropout), as a
  frozen backbone is run under its new head.

  With a moving average in the state (an EMATrainState), it moves towards the new weights and
  BatchNorm statistics: ema += (1 - d) * (new - ema), d = `ema_decay`, or with `ema_warmup`
  TensorFlow's min(ema_decay, (1 + n) / (10 + n)) after n earlier steps.
  """
  dropout_key = jax.random.fold_in(state.dropout_key, state.step)

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    if frozen_statistics:
      (logits, features), updates = state.apply_fn(variables, batch['image'], train=False), {}
    else:
      (logits, features), updates = state.apply_fn(
          variables, batch['image'], train=True, rngs={'dropout': dropout_key}, mutable=['batch_stats']
      )
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    for key, aux_logits in features.items():
      if key.startswith('aux') and aux_loss_weight:
        loss += aux_loss_weight * cross_entropy(aux_logits, batch['label'], label_smoothing).mean()
    return loss, (logits, updates.get('batch_stats', state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  # A jitted step cannot raise: labels outside [0, classes) make the loss NaN (never a wrong
  # finite number) and are counted, so the loop stops and says why.
  labels_out_of_range = jnp.sum((batch['label'] < 0) | (batch['label'] >= logits.shape[-1]))
  loss = jnp.where(labels_out_of_range == 0, loss, jnp.nan)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new = {'params': optax.apply_updates(state.params, updates), 'batch_stats': batch_stats}
  if isinstance(state, EMATrainState):
    decay = jnp.float32(ema_decay)
    if ema_warmup:
      decay = jnp.minimum(decay, (1.0 + state.step) / (10.0 + state.step))
    new['ema'] = jax.tree.map(lambda e, w: e + (1 - decay) * (w - e), state.ema, dict(new))
  state = state.replace(step=state.step + 1, opt_state=opt_state, **new)
  return state, {
      'loss': loss,
      'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
      'top5_accuracy': jnp.mean(correct_top_k(logits, batch['label'], 5)),
      'labels_out_of_range': labels_out_of_range,
  }


def eval_step(state: TrainState, batch: dict[str, jax.Array], use_ema: bool = False) -> dict[str, jax.Array]:
  """Sums over the real (mask 1) examples of a padded batch; `use_ema`: of the moving average's weights."""
  variables = state.ema if use_ema else {'params': state.params, 'batch_stats': state.batch_stats}
  logits, _ = state.apply_fn(variables, batch['image'], train=False)
  mask = batch['mask']
  return {
      'loss_sum': jnp.sum(cross_entropy(logits, batch['label']) * mask),
      'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
      'correct_top5': jnp.sum(correct_top_k(logits, batch['label'], 5) * mask),
      'count': jnp.sum(mask),
  }


def train_steps(state: TrainState, batches: dict[str, jax.Array], **step_args) -> tuple[TrainState, dict]:
  """train_step over batches stacked on a leading axis (one call, one set of step buffers);
  the metrics of each step, stacked."""
  return jax.lax.scan(functools.partial(train_step, **step_args), state, batches)


def eval_steps(state: TrainState, batches: dict[str, jax.Array], use_ema: bool = False) -> dict[str, jax.Array]:
  """eval_step over batches stacked on a leading axis; the sums of each, stacked."""
  return jax.lax.map(functools.partial(eval_step, state, use_ema=use_ema), batches)
