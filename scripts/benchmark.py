"""Times compiled training or evaluation steps on synthetic data, or the input pipeline; one
JSON line per run.

    python -m scripts.benchmark --model=mnist_inception --mode=train --batch_size=128 --steps=5 --compare_torch
    python -m scripts.benchmark --model=googlenet --mode=eval --batch_size=32 --steps=3 --compare_torch
    python -m scripts.benchmark --mode=input --batch_size=128     # images/s MNIST's training input delivers
    python -m scripts.benchmark --mode=input --batch_size=32 --dataset=mnist \
        --input_config=experiments/configs/imagenet_inception.py --input_config.eval_split=test
                                                # another experiment's input (Inception crops at 224)
    python -m scripts.benchmark --peak          # the machine's float32 matmul rate
    python -m scripts.benchmark --peak --mode=train               # both, and fraction_of_peak
    python -m scripts.benchmark --mode=resume --resume_config=experiments/configs/imagenet_inception.py:synthetic \
        --resume_overrides=global_batch_size=8,eval_batch_size=8
                                                # process start to first step: cold, then resumed

The step is the one `inception_jax.train` runs (Adam, aux losses weighted by
--aux_loss_weight, donated state, jit with shardings); compilation is timed separately
from the steps. Multiply-adds per image come from `inception_jax.analysis`; achieved FLOP/s
counts 2 FLOPs per multiply-add, and 3x the forward for a training step (forward, input
gradient, weight gradient).

Both frameworks run under the experiments' malloc settings (inception_jax.hostmem;
--nokeep_freed_memory: glibc's defaults) and any MALLOC_* settings in the environment; the
JSON lines report both. --steps_per_loop=10 times the MNIST experiment's calls of 10 steps
(torch runs 10 steps per round too); times are per step.

--mode=resume times a training command from the start of its process to its first finished
step, three times in one workdir: cold (an empty compilation cache of its own), then stopped by
SIGTERM and resumed from its checkpoint with that cache warm, then resumed with the cache off.
It counts the programs each run read from the cache and wrote to it (JAX's debug lines).

--compare_torch times the same network in PyTorch eager (scripts/torch_refs/benchmark_nets.py:
same structure and parameter count, checked; Adam for training, eval mode and
`torch.inference_mode` for evaluation) in the same process, alternating one JAX and one
torch step (in alternating order), so noise on this shared machine hits both alike.
"""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments.configs import default, mnist_inception
from inception_jax import analysis, data, hostmem, models, parallel, train

_MODEL = flags.DEFINE_string('model', 'mnist_inception', 'A registered model.')
_MODE = flags.DEFINE_enum(
    'mode',
    'train',
    ['train', 'eval', 'input', 'resume'],
    'Time training steps, evaluation steps, the training input (--input_config, --dataset), or a command '
    'from its start to its first step, cold and resumed (--resume_config).',
)
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, "Input height and width; default: the model's own.")
_STEPS = flags.DEFINE_integer(
    'steps', None, 'Timed steps after one warm-up step; default 5, or 100 batches for --mode=input.'
)
_STEPS_PER_LOOP = flags.DEFINE_integer(
    'steps_per_loop', 1, 'Steps (or eval batches) per call, as config.steps_per_loop (the MNIST experiment: 10).'
)
_KEEP_FREED_MEMORY = flags.DEFINE_bool(
    'keep_freed_memory',
    True,
    "The experiments' malloc settings (inception_jax.hostmem), for both frameworks; false: glibc's defaults.",
)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype (parameters stay float32).')
_AUX_LOSS_WEIGHT = flags.DEFINE_float(
    'aux_loss_weight', 0.3, "Weight of each aux head's loss, as config.aux_loss_weight."
)
_COMPARE_TORCH = flags.DEFINE_bool('compare_torch', False, 'Also time the PyTorch eager equivalent, alternating steps.')
_PEAK = flags.DEFINE_bool('peak', False, 'Measure the float32 matmul rate; with --mode or --model, then run that too.')
_PEAK_FLOPS = flags.DEFINE_float('peak_flops', None, 'A peak FLOP/s measured earlier by --peak, for fraction_of_peak.')
_INPUT_CONFIG = config_flags.DEFINE_config_file(
    'input_config',
    None,
    '--mode=input: the experiment config whose training input is timed; default: '
    "experiments/configs/mnist_inception.py's.",
)
_DATASET = flags.DEFINE_string('dataset', None, "--mode=input: the TFDS dataset, replacing the config's.")
_RESUME_CONFIG = flags.DEFINE_string(
    'resume_config',
    'experiments/configs/imagenet_inception.py:synthetic',
    '--mode=resume: the experiment config (file[:variant]); its command is experiments.<file>.',
)
_RESUME_OVERRIDES = flags.DEFINE_list(
    'resume_overrides', [], '--mode=resume: config fields, FIELD=VALUE,... (e.g. model.name=inception_v3).'
)
_JSON = flags.DEFINE_bool('json', True, 'Print JSON lines (else one "key: value" per line).')

# glibc reads these when the process starts; they change how both frameworks' buffers are allocated.
MALLOC_SETTINGS = (
    'MALLOC_ARENA_MAX',
    'MALLOC_MMAP_MAX_',
    'MALLOC_TRIM_THRESHOLD_',
    'MALLOC_MMAP_THRESHOLD_',
    'GLIBC_TUNABLES',
)

TORCH_MISSING = 'needs torch (the test extra: pip install -e ".[test]")'


def _cpu_seconds() -> float:
  times = os.times()
  return times.user + times.system  # every thread of this process


def _time(fn: Callable[[], Any], steps: int) -> list[tuple[float, float]]:
  """(wall, CPU) seconds per call of `fn`, which returns only when its work is done."""
  times = []
  for _ in range(steps):
    start, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    times.append((time.perf_counter() - start, _cpu_seconds() - cpu))
  return times


def _alternate(fns: list[Callable[[], Any]], steps: int) -> list[list[tuple[float, float]]]:
  """`_time` of each of `fns` `steps` times, one call of each per round, the order reversed
  every other round so that neither always runs first."""
  times = [[] for _ in fns]
  for round_ in range(steps):
    order = range(len(fns)) if round_ % 2 == 0 else reversed(range(len(fns)))
    for i in order:
      times[i] += _time(fns[i], 1)
  return times


def host_memory_gb() -> float:
  """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _devices() -> dict:
  malloc = {k: os.environ[k] for k in MALLOC_SETTINGS if k in os.environ}
  return {
      'device_kind': jax.devices()[0].device_kind,
      'device_count': jax.device_count(),
      'keep_freed_memory': hostmem.keeping(),
      'malloc_settings': malloc,
  }


def _torch():
  """torch and our torch networks, imported only when asked for (torch is a test extra)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise RuntimeError(f'--compare_torch {TORCH_MISSING}.') from e
  from scripts.torch_refs import benchmark_nets  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  return torch, benchmark_nets


def peak(n: int = 4096, steps: int = 5, compare_torch: bool = False) -> dict:
  """The best of `steps` float32 n x n matrix products, in FLOP/s (and torch's with `compare_torch`)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  matmul = jax.jit(jnp.dot)
  jax.block_until_ready(matmul(a, a))
  best = min(wall for wall, _ in _time(lambda: jax.block_until_ready(matmul(a, a)), steps))
  result = {'mode': 'peak', 'matmul': f'{n}x{n}x{n} float32', 'flops_per_sec': 2 * n**3 / best, **_devices()}
  if compare_torch:
    torch, _ = _torch()
    b = torch.from_numpy(np.array(a))
    torch.mm(b, b)
    result['torch_flops_per_sec'] = 2 * n**3 / min(wall for wall, _ in _time(lambda: torch.mm(b, b), steps))
    result['torch_threads'] = torch.get_num_threads()
  return result


def param_counts(model_name: str, image_size: int | None = None, **overrides) -> tuple[int, int]:
  """Parameters of our model and of its torch equivalent (the latter needs torch)."""
  model = models.create_model(model_name, **overrides)
  size = image_size or model.image_size
  x = jax.ShapeDtypeStruct((1, size, size, model.in_channels), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
  return sum(p.size for p in jax.tree.leaves(variables['params'])), _torch_param_count(model_name, model)


def _torch_param_count(model_name: str, model) -> int:
  torch, nets = _torch()
  with torch.device('meta'):  # shapes only: nothing allocated or initialized
    return nets.param_count(nets.build(model_name, model))


def _check_same_size(num_params: int, torch_params: int) -> None:
  if torch_params != num_params:
    raise AssertionError(
        f'The torch network has {torch_params:,} parameters, ours {num_params:,}: not the same network.'
    )


def run(
    model_name: str,
    mode: str,
    batch_size: int,
    image_size: int | None = None,
    steps: int = 5,
    dtype: str = 'float32',
    *,
    aux_loss_weight: float = 0.3,
    compare_torch: bool = False,
    peak_flops: float | None = None,
    steps_per_loop: int = 1,
    **overrides,
) -> dict:
  """Times `steps` training or evaluation steps of `model_name` (fields `overrides`) on random data;
  calls of `steps_per_loop` steps (times are per step)."""
  model = models.create_model(model_name, dtype=jnp.dtype(dtype), **overrides)
  size = image_size or model.image_size
  image_shape = (size, size, model.in_channels)
  macs = sum(l.macs for l in analysis.count(models.create_model(model_name, **overrides), image_shape, train=False))

  config = default.get_config()
  config.update(optimizer='adam', learning_rate=1e-3, lr_schedule='constant', warmup_steps=0, num_train_steps=1)
  tx = train.create_optimizer(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(batch_size, mesh, 'batch_size')
  abstract = jax.eval_shape(lambda: train.create_train_state(model, tx, image_shape, 0))
  num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  if compare_torch:  # fail before compiling anything
    _check_same_size(num_params, _torch_param_count(model_name, model))
  state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), abstract)
  state = train.initial_state(model, tx, image_shape, 0, state_sharding)  # the training loop's
  rng = np.random.default_rng(0)
  host_batch = {
      'image': rng.random((batch_size, *image_shape), np.float32),
      'label': rng.integers(0, model.num_classes, batch_size).astype(np.int32),
      'mask': np.ones(batch_size, np.float32),
  }
  # steps_per_loop copies, stacked as the loop stacks its batches (a training batch has no mask).
  stacked = {k: np.stack([v] * steps_per_loop) for k, v in host_batch.items() if mode == 'eval' or k != 'mask'}
  batch = parallel.shard_batch(stacked, mesh, stacked=True)

  if mode == 'train':
    step = jax.jit(
        functools.partial(train.train_steps, aux_loss_weight=aux_loss_weight),
        in_shardings=(state_sharding, parallel.batch_sharding(mesh, stacked=True)),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    holder = [state]

    def jax_step():
      holder[0], metrics = compiled(holder[0], batch)
      jax.block_until_ready((holder[0], metrics))

  elif mode == 'eval':
    step = jax.jit(
        train.eval_steps,
        in_shardings=(state_sharding, parallel.batch_sharding(mesh, stacked=True)),
    )
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    jax_step = lambda: jax.block_until_ready(compiled(state, batch))
  else:
    raise ValueError(f"mode must be 'train' or 'eval' here, got {mode!r}.")

  _time(jax_step, 1)  # warm-up
  memory_gb = host_memory_gb()  # before torch allocates anything
  flops_per_image = 2 * macs * (3 if mode == 'train' else 1)

  def rates(prefix: str, times: list[tuple[float, float]]) -> dict:
    walls, cpus = zip(*[(wall / steps_per_loop, cpu / steps_per_loop) for wall, cpu in times])
    seconds = statistics.median(walls)
    out = {
        f'{prefix}images_per_sec': batch_size / seconds,
        f'{prefix}step_ms': 1e3 * seconds,
        f'{prefix}step_ms_min': 1e3 * min(walls),
        f'{prefix}step_cpu_ms': 1e3 * statistics.median(cpus),
        f'{prefix}step_ms_all': [round(1e3 * t, 1) for t in walls],
        f'{prefix}flops_per_sec': flops_per_image * batch_size / seconds,
    }
    if peak_flops:
      out[f'{prefix}fraction_of_peak'] = out[f'{prefix}flops_per_sec'] / peak_flops
    return out

  result = {
      'model': model_name,
      'mode': mode,
      'batch_size': batch_size,
      'image_size': size,
      'dtype': dtype,
      'steps_per_loop': steps_per_loop,
      **_devices(),
      'params': num_params,
      'compile_seconds': compile_seconds,
      'peak_host_memory_gb': memory_gb,
      'macs_per_image': macs,
  }
  if aux_loss_weight and mode == 'train':
    result['aux_loss_weight'] = aux_loss_weight
  if not compare_torch:
    return result | rates('', _time(jax_step, steps))

  torch_step, torch_info = _torch_step(model_name, model, mode, host_batch, aux_loss_weight, dtype)
  _check_same_size(num_params, torch_info['torch_params'])
  torch_steps = lambda: [torch_step() for _ in range(steps_per_loop)]
  jax_times, torch_times = _alternate([jax_step, torch_steps], steps)
  result |= rates('', jax_times) | torch_info | rates('torch_', torch_times)
  result['speedup'] = result['images_per_sec'] / result['torch_images_per_sec']
  # Other processes can stretch a step's wall time several times over without adding to its
  # CPU time (on this shared 2-core machine, torch steps of 7 CPU seconds took 7 to 380 s):
  # the fastest steps and the CPU times tell whether the median ratio is the machine's doing.
  result['speedup_of_fastest'] = result['torch_step_ms_min'] / result['step_ms_min']
  result['speedup_in_cpu_time'] = result['torch_step_cpu_ms'] / result['step_cpu_ms']
  result['peak_host_memory_gb_with_torch'] = host_memory_gb()
  return result


def _torch_step(model_name, model, mode, host_batch, aux_loss_weight, dtype) -> tuple[Callable[[], Any], dict]:
  """One warmed-up torch step on the same batch (NCHW), and facts about it."""
  torch, nets = _torch()
  torch.manual_seed(0)
  net = nets.build(model_name, model)
  images = torch.from_numpy(np.ascontiguousarray(host_batch['image'].transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(host_batch['label'].astype(np.int64))
  if mode == 'train':
    step = nets.train_step(net, images, labels, aux_loss_weight=aux_loss_weight, dtype=dtype)
  else:
    step = nets.eval_step(net, images, labels, dtype=dtype)
  warmup = _time(step, 1)[0][0]
  return step, {
      'torch_version': torch.__version__,
      'torch_threads': torch.get_num_threads(),
      'torch_params': nets.param_count(net),
      'torch_warmup_seconds': warmup,
  }


def input_pipeline(config: ml_collections.ConfigDict, steps: int = 100) -> dict:
  """Images/s delivered to the step by the training input of an experiment `config`
  (`data.create_input`: MNIST in memory, Inception crops streamed from TFDS, ...): host
  batches sharded onto the devices (`parallel.shard_batch`), as train_and_evaluate feeds
  its train step. Setting up (reading MNIST into memory, opening files) is timed apart."""
  mesh = parallel.make_mesh()
  batch_size = config.global_batch_size
  parallel.check_batch_divisible(batch_size, mesh, 'batch_size')
  start = time.perf_counter()
  inputs = data.create_input(config, jax.process_index(), jax.process_count())  # as train_and_evaluate
  batches = inputs.train_batches(0)
  setup_seconds = time.perf_counter() - start
  one = lambda: jax.block_until_ready(parallel.shard_batch(next(batches), mesh))
  _time(one, 1)  # warm-up
  times = [wall for wall, _ in _time(one, steps)]
  seconds = statistics.median(times)
  return {
      'mode': 'input',
      'dataset': config.dataset,
      'input_pipeline': config.input_pipeline,
      'batch_size': batch_size,
      'image_shape': list(inputs.image_shape),
      **_devices(),
      'images_per_sec': batch_size / seconds,
      'batch_ms': 1e3 * seconds,
      'batch_ms_max': 1e3 * max(times),
      'images_per_sec_overall': batch_size * steps / sum(times),
      'batches': steps,
      'setup_seconds': setup_seconds,
      'peak_host_memory_gb': host_memory_gb(),
  }


# JAX's debug lines for the programs it reads from, or writes to, the persistent cache.
_CACHE_HIT = re.compile(r"Persistent compilation cache hit for '([^']+)' with key '([^']+)'")
_CACHE_WRITE = re.compile(r"Writing (\S+) to persistent compilation cache with key '([^']+)'")
_STEP_LINE = re.compile(r'\] step (\d+)/')


def time_to_first_step(command: list[str], env: dict) -> dict:
  """Runs `command` until its first training step is logged, then stops it with SIGTERM (it
  saves that step): the seconds from starting the process to that line, and its cache lines."""
  start = time.perf_counter()
  process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  lines, seconds, step = [], None, None
  for line in process.stderr:
    lines.append(line)
    if seconds is None and (found := _STEP_LINE.search(line)):
      seconds, step = time.perf_counter() - start, int(found.group(1))
      process.send_signal(signal.SIGTERM)
  status = process.wait()
  log = ''.join(lines)
  if seconds is None or status not in (0, 128 + signal.SIGTERM):
    raise RuntimeError(f'{" ".join(command)} ended with status {status} before a step:\n{log[-3000:]}')
  return {
      'seconds_to_first_step': seconds,
      'first_step': step,
      'read_from_cache': sorted(name for name, _ in set(_CACHE_HIT.findall(log))),  # once per key
      'written_to_cache': sorted(name for name, _ in set(_CACHE_WRITE.findall(log))),
      'log': log,
  }


def resume(config: str, overrides: list[str], uncached: bool = True) -> dict:
  """--mode=resume: `config`'s command, cold, resumed with a warm compilation cache, then (`uncached`)
  resumed without one."""
  module = 'experiments.' + os.path.splitext(os.path.basename(config.split(':')[0]))[0]
  with tempfile.TemporaryDirectory(prefix='benchmark_resume_') as folder:
    cache = os.path.join(folder, 'jax_cache')
    fields = [
        'steps_per_loop=1',
        'log_every_steps=1',
        'eval_every_steps=0',
        'checkpoint_every_steps=100000',
        'num_train_steps=100000',
        *overrides,
    ]
    command = [sys.executable, '-m', module, f'--config={config}', f'--workdir={folder}/workdir']
    command += [f'--config.{field}' for field in fields]
    # JAX's debug handler prints only while the 'jax' logger has a level of its own.
    env = dict(
        os.environ, JAX_DEBUG_LOG_MODULES='jax._src.compiler,jax._src.compilation_cache', JAX_LOGGING_LEVEL='WARNING'
    )
    env.pop('JAX_COMPILATION_CACHE_DIR', None)  # the runs use theirs (the config's field)
    settings = [('cold', cache), ('resumed_warm_cache', cache)] + [('resumed_no_cache', '')] * uncached
    runs = {
        name: time_to_first_step(command + [f'--config.compilation_cache_dir={setting}'], env)
        for name, setting in settings
    }
    entries = (
        [os.path.join(cache, n) for n in os.listdir(cache) if n.endswith('-cache')] if os.path.isdir(cache) else []
    )
    result = {
        'mode': 'resume',
        'config': config,
        'overrides': overrides,
        **_devices(),
        'jax_version': jax.__version__,
        'cache_entries': len(entries),
        'cache_mb': sum(os.path.getsize(e) for e in entries) / 2**20,
    }
    for name, run_ in runs.items():
      result |= {f'{name}_{k}': v for k, v in run_.items() if k != 'log'}
    result['warm_over_cold'] = result['resumed_warm_cache_seconds_to_first_step'] / result['cold_seconds_to_first_step']
    result['_logs'] = {name: run_['log'] for name, run_ in runs.items()}
    return result


def _print(result: dict) -> None:
  result = {k: v for k, v in result.items() if not k.startswith('_')}
  if _JSON.value:
    print(json.dumps(result), flush=True)
  else:
    print('\n'.join(f'{k}: {v}' for k, v in result.items()), flush=True)


def main(argv) -> int:
  try:
    _check_flags(argv)
    _benchmark()
  except ValueError as e:  # a flag, or what the model says of its input (an image smaller than it allows)
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def _benchmark() -> None:
  if _KEEP_FREED_MEMORY.value:
    hostmem.keep_freed_memory()  # before XLA's threads (or torch) allocate anything
  peak_flops = _PEAK_FLOPS.value
  if _PEAK.value:
    measured = peak(compare_torch=_COMPARE_TORCH.value)
    _print(measured)
    peak_flops = measured['flops_per_sec']
    if not (flags.FLAGS['mode'].present or flags.FLAGS['model'].present):
      return
  if _MODE.value == 'input':
    config = _INPUT_CONFIG.value or mnist_inception.get_config()
    with config.unlocked():
      config.global_batch_size = _BATCH.value
      if _DATASET.value:
        config.dataset = _DATASET.value
    _print(input_pipeline(config, _STEPS.value or 100))
    return
  if _MODE.value == 'resume':
    _print(resume(_RESUME_CONFIG.value, _RESUME_OVERRIDES.value))
    return
  _print(
      run(
          _MODEL.value,
          _MODE.value,
          _BATCH.value,
          _IMAGE_SIZE.value,
          _STEPS.value or 5,
          _DTYPE.value,
          aux_loss_weight=_AUX_LOSS_WEIGHT.value,
          compare_torch=_COMPARE_TORCH.value,
          peak_flops=peak_flops,
          steps_per_loop=_STEPS_PER_LOOP.value,
      )
  )


def _check_flags(argv) -> None:
  """Every flag checked before anything is timed, compiled or read (ValueError, one line)."""
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}: benchmark takes only flags.')
  if _MODE.value in ('train', 'eval') and _MODEL.value not in models.list_models():
    raise ValueError(f'unknown --model={_MODEL.value}; the models: {", ".join(models.list_models())}.')
  for flag in (_BATCH, _IMAGE_SIZE, _STEPS, _STEPS_PER_LOOP, _PEAK_FLOPS):
    if flag.value is not None and flag.value <= 0:
      raise ValueError(f'--{flag.name} must be positive, got {flag.value}.')
  if _MODE.value == 'resume' and not os.path.isfile(path := _RESUME_CONFIG.value.split(':', 1)[0]):
    raise ValueError(f'--resume_config: no config file {path}.')


if __name__ == '__main__':
  app.run(main)
