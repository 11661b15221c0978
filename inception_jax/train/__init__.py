"""Training and evaluation: one idea per module, the names below importable from here.

    state, final_metrics = train_and_evaluate(config, workdir)

is what `python -m experiments.mnist_inception` runs; tests call the same function.

- optimizer: the optimizers and learning-rate schedules of the configs;
- steps: the train state (with a moving average of the weights, or without) and the pure, jit-able
  train and evaluation steps;
- writers: metrics.jsonl and TensorBoard;
- record: the resolved config, what fixes a run, the resume check;
- loop: the loop, evaluation, checkpoints and signals: train_and_evaluate.
"""

from inception_jax.train.loop import evaluate, train_and_evaluate
from inception_jax.train.optimizer import create_optimizer, learning_rate_schedule
from inception_jax.train.record import (
    OPERATIONAL_FIELDS,
    ConfigChangedError,
    check_config,
    check_resume,
    resolve_config,
    run_record,
)
from inception_jax.train.steps import (
    EMATrainState,
    TrainState,
    correct_top_k,
    create_model,
    create_train_state,
    cross_entropy,
    eval_step,
    eval_steps,
    initial_state,
    train_step,
    train_steps,
)
from inception_jax.train.writers import JsonlWriter, create_writer
