"""Times compiled training or evaluation steps on synthetic data; one JSON line per run.

    python -m scripts.benchmark --model=mnist_inception --mode=train --batch_size=128 --steps=5
    python -m scripts.benchmark --model=mnist_inception --mode=eval --batch_size=1000 --steps=5
    python -m scripts.benchmark --peak          # the machine's float32 matmul rate

The step is the one `inception_jax.train` runs (Adam, donated state, jit with shardings);
compilation is timed separately from the steps. Multiply-adds per image come from
`inception_jax.analysis`; achieved FLOP/s counts 2 FLOPs per multiply-add, and 3x the
forward for a training step (forward, input gradient, weight gradient).
"""

import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from inception_jax import analysis, models, parallel, train

_MODEL = flags.DEFINE_string('model', 'mnist_inception', 'A registered model.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Time training or evaluation steps.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, "Input height and width; default: the model's own.")
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (after one warm-up step).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype (parameters stay float32).')
_PEAK = flags.DEFINE_bool('peak', False, 'Measure the float32 matmul rate instead.')
_JSON = flags.DEFINE_bool('json', True, 'Print JSON lines.')


def _time(fn, steps):
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def peak(n: int = 4096, steps: int = 5) -> dict:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  matmul = jax.jit(jnp.dot)
  jax.block_until_ready(matmul(a, a))
  best = min(_time(lambda: matmul(a, a), steps))
  return {'mode': 'peak', 'matmul': f'{n}x{n}x{n} float32', 'flops_per_sec': 2 * n**3 / best,
          'device_kind': jax.devices()[0].device_kind, 'device_count': jax.device_count()}


def run(model_name: str, mode: str, batch_size: int, image_size: int | None, steps: int, dtype: str) -> dict:
  model = models.create_model(model_name, dtype=jnp.dtype(dtype))
  size = image_size or model.image_size
  image_shape = (size, size, model.in_channels)
  macs = sum(l.macs for l in analysis.count(models.create_model(model_name), image_shape, train=False))

  config = ml_collections.ConfigDict(dict(
      optimizer='adam', learning_rate=1e-3, lr_schedule='constant', warmup_steps=0, num_train_steps=1,
      adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8))
  tx = train.create_optimizer(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(batch_size, mesh, 'batch_size')
  abstract = jax.eval_shape(lambda: train.create_train_state(model, tx, image_shape, 0))
  state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), abstract)
  state = jax.jit(lambda: train.create_train_state(model, tx, image_shape, 0), out_shardings=state_sharding)()
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({
      'image': rng.random((batch_size, *image_shape), np.float32),
      'label': rng.integers(0, model.num_classes, batch_size).astype(np.int32),
      'mask': np.ones(batch_size, np.float32),
  }, mesh)

  if mode == 'train':
    step = jax.jit(train.train_step, in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                   out_shardings=(state_sharding, parallel.replicated(mesh)), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    holder = [state]

    def one():
      holder[0], metrics = compiled(holder[0], batch)
      return metrics
  else:
    step = jax.jit(train.eval_step, in_shardings=(state_sharding, parallel.batch_sharding(mesh)))
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    one = lambda: compiled(state, batch)

  _time(one, 1)  # warm-up
  times = _time(one, steps)
  step_seconds = statistics.median(times)
  flops_per_image = 2 * macs * (3 if mode == 'train' else 1)
  return {
      'model': model_name, 'mode': mode, 'batch_size': batch_size, 'image_size': size, 'dtype': dtype,
      'device_kind': jax.devices()[0].device_kind, 'device_count': jax.device_count(),
      'images_per_sec': batch_size / step_seconds, 'step_ms': 1e3 * step_seconds,
      'step_ms_min': 1e3 * min(times), 'compile_seconds': compile_seconds,
      'peak_host_memory_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      'macs_per_image': macs, 'flops_per_sec': flops_per_image * batch_size / step_seconds,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  result = peak() if _PEAK.value else run(
      _MODEL.value, _MODE.value, _BATCH.value, _IMAGE_SIZE.value, _STEPS.value, _DTYPE.value)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
