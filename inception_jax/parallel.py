"""The device mesh and the shardings of batches and train state."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh() -> Mesh:
  """A 1-D mesh with the 'data' axis over every device of every process."""
  # Auto axes: XLA's sharding propagation places the intermediates (jax.make_mesh
  # defaults to Explicit axes, which would require annotating them all).
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the 'data' axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(global_batch_size: int, mesh: Mesh, what: str = 'global_batch_size') -> None:
  devices = mesh.shape[DATA_AXIS]
  if global_batch_size % devices:
    raise ValueError(
        f'{what}={global_batch_size} is not divisible by the {devices} devices of the data axis; '
        f'use a multiple of {devices}, e.g. {what}={max(devices, global_batch_size // devices * devices)}.'
    )


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's part of a global batch -> global arrays split over the 'data' axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
