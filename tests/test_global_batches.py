"""The batch layout's random batches and their placement as global arrays: 8 devices of one
process, and 2 processes of 4 devices (tests/global_batches_worker.py)."""

import os
import subprocess
import sys

import numpy as np
from jax.sharding import PartitionSpec as P

from conftest import free_port
from vclr_jax import batch as batch_layout
from vclr_jax import global_batches
from vclr_jax.train_step import make_mesh

FRAME_SIZE = (24, 40)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'global_batches_worker.py')


def test_random_batch_follows_the_layout_with_valid_labels():
  batch = batch_layout.random_batch(40, FRAME_SIZE, seed=3)
  batch_layout.check_batch(batch, 40, FRAME_SIZE)
  assert set(batch['anchor'].tolist()) == {0, 2}
  allowed = {tuple(p) for p in batch_layout.SHUFFLES}
  assert {tuple(p) for p in batch['query_perm']} == allowed
  shuffled_query = [tuple(p) != (0, 1, 2) for p in batch['query_perm']]
  shuffled_key = [tuple(p) != (0, 1, 2) for p in batch['key_perm']]
  np.testing.assert_array_equal(batch['order_label'],
                                np.array(shuffled_query) + 2 * np.array(shuffled_key))
  np.testing.assert_array_equal(batch['frames'],
                                batch_layout.random_batch(40, FRAME_SIZE, seed=3)['frames'])


def test_placed_batches_are_split_over_the_data_axis_in_order():
  mesh = make_mesh()
  assert mesh.size == 8
  host_batches = [batch_layout.random_batch(16, FRAME_SIZE, seed) for seed in range(3)]
  placed = list(global_batches.prefetch_to_mesh(iter(host_batches), mesh, size=2))
  assert len(placed) == 3
  for host, on_devices in zip(host_batches, placed):
    assert set(on_devices) == set(host)
    for name, array in on_devices.items():
      assert array.sharding.spec == P('data')
      np.testing.assert_array_equal(np.asarray(array), host[name])
      for shard in array.addressable_shards:
        rows = shard.index[0]
        assert rows.stop - rows.start == 2
        np.testing.assert_array_equal(np.asarray(shard.data), host[name][rows])


def test_two_processes_place_their_slices_of_the_global_batch():
  port = free_port()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  processes = [subprocess.Popen([sys.executable, WORKER, str(port), str(i)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env) for i in range(2)]
  for process in processes:
    try:
      output = process.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      raise
    assert process.returncode == 0 and 'PLACED 3' in output, output[-3000:]
