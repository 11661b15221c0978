"""The mesh arithmetic: which axis of an array is sharded, and a mesh that does not fit is
reported. Training on 8 devices, replicated and sharded, against one device:
test_distributed.py; a batch that does not divide over the devices: test_train.py."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from inception_jax import parallel


def test_param_spec_picks_the_largest_divisible_axis_of_large_arrays():
  assert parallel.param_spec((200_704, 700), 8) == P('data', None)
  assert parallel.param_spec((3, 3, 192, 64), 8, min_size=1000) == P(None, None, 'data', None)
  assert parallel.param_spec((3, 3, 5, 7), 8, min_size=1) == P()  # nothing divisible
  assert parallel.param_spec((700,), 8) == P()  # small: stays replicated
  assert parallel.param_spec((200_704, 700), 1) == P()


def test_mesh_larger_than_the_devices_is_reported():
  with pytest.raises(ValueError, match=r'A mesh of 4 devices does not fit the 1 devices.*num_devices to from 1 to 1'):
    parallel.make_mesh(4)
  assert parallel.make_mesh(-1).shape == {'data': jax.device_count()}
