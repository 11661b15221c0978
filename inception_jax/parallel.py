"""The device mesh, the shardings of batches and train state, and JAX's multi-process set-up.

One program runs on every host (JAX's multi-controller model): each process feeds its own
devices its part of every global batch, and `jax.jit` over global arrays does the rest.
The train state is replicated over the 'data' axis by default; `state_shardings(...,
shard_params=True)` splits its largest arrays over that axis too (FSDP-style: XLA gathers
a parameter where a step needs it whole and reduce-scatters its gradient).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'
SHARD_MIN_SIZE = 2**18  # arrays with fewer elements stay replicated when parameters are sharded


def initialize_distributed(
    coordinator_address: str = '', num_processes: int = 0, process_id: int = -1, *, auto: bool = False
) -> None:
  """Joins this process to a multi-process run, before anything else touches JAX.

  Either all three of `coordinator_address` ('host:port' of process 0, reachable from
  every host), `num_processes` and `process_id` are given, or `auto=True` lets JAX detect
  them (Cloud TPU, Slurm, Open MPI, Kubernetes). Neither: a single-process run. On CPU,
  processes exchange data through JAX's default CPU collectives (gloo over TCP).
  """
  explicit = (coordinator_address, num_processes > 0, process_id >= 0)
  if any(explicit) and not all(explicit):
    raise ValueError(
        "A multi-process run needs all of --coordinator_address=HOST:PORT (process 0's), "
        f'--num_processes=N and --process_id=I (0 <= I < N); got coordinator_address={coordinator_address!r}, '
        f'num_processes={num_processes}, process_id={process_id}. Or pass --auto_distributed on a cluster '
        'JAX detects (TPU pod, Slurm, Open MPI).'
    )
  if all(explicit):
    if not 0 <= process_id < num_processes:
      raise ValueError(f'process_id={process_id} must lie in [0, num_processes={num_processes}).')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif auto:
    jax.distributed.initialize()
  else:
    return
  logging.info(
      'Process %d of %d; %d local of %d devices.',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )


def make_mesh(num_devices: int = -1) -> Mesh:
  """A 1-D mesh, the 'data' axis, over `num_devices` devices (-1: every device of every process).

  A mesh over fewer devices than there are is for single-process runs (tests, or leaving
  devices free); with several processes every device must take part.
  """
  available = jax.device_count()
  if num_devices == -1:
    num_devices = available
  if not 0 < num_devices <= available or (jax.process_count() > 1 and num_devices != available):
    where = f'{jax.process_count()} processes x {jax.local_device_count()}' if jax.process_count() > 1 else '1 process'
    allowed = f'{available} (or -1)' if jax.process_count() > 1 else f'from 1 to {available}, or -1 for all'
    raise ValueError(
        f'A mesh of {num_devices} devices does not fit the {available} devices of this run ({where}); '
        f'set num_devices to {allowed}.'
    )
  # Auto axes: XLA's sharding propagation places the intermediates (jax.make_mesh
  # defaults to Explicit axes, which would require annotating them all).
  return jax.make_mesh(
      (num_devices,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:num_devices]
  )


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Leading (batch) axis split over the 'data' axis; with `stacked`, the second (batches stacked per step)."""
  return NamedSharding(mesh, P(None, DATA_AXIS) if stacked else P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], devices: int, min_size: int = SHARD_MIN_SIZE) -> P:
  """The largest axis divisible by `devices` goes over the 'data' axis, if the array is big enough."""
  if devices == 1 or int(np.prod(shape)) < min_size:
    return P()
  divisible = [axis for axis, size in enumerate(shape) if size % devices == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda a: shape[a])
  return P(*[DATA_AXIS if a == axis else None for a in range(len(shape))])


def state_shardings(
    abstract_state: Any, mesh: Mesh, *, shard_params: bool = False, min_size: int = SHARD_MIN_SIZE
) -> Any:
  """NamedShardings for every array of a train state (from `jax.eval_shape`).

  Replicated unless `shard_params`; then every array of at least `min_size` elements with
  an axis divisible by the device count is split along its largest such axis. The rule
  looks at shapes only, so Adam's moments, shaped like their parameters, are split like
  them, and BatchNorm statistics, step and keys stay replicated.
  """
  devices = mesh.shape[DATA_AXIS]
  if not shard_params:
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(x.shape, devices, min_size)), abstract_state)


def check_batch_divisible(global_batch_size: int, mesh: Mesh, what: str = 'global_batch_size') -> None:
  """Every device, and every process, must get the same number of examples."""
  devices = mesh.shape[DATA_AXIS]
  if global_batch_size % devices:
    raise ValueError(
        f'{what}={global_batch_size} is not divisible by the {devices} devices of the data axis; '
        f'use a multiple of {devices}, e.g. {what}={max(devices, global_batch_size // devices * devices)}.'
    )


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, stacked: bool = False) -> dict[str, jax.Array]:
  """This process's part of a global batch (global / processes examples) -> global arrays
  split over the 'data' axis; its examples land on this process's devices. `stacked`: batches
  stacked on a leading axis (steps), the examples on the second."""
  sharding = batch_sharding(mesh, stacked)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
