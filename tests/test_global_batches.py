"""The batch layout's random batches and their placement as global arrays on 8 devices."""

import numpy as np
from jax.sharding import PartitionSpec as P

from vclr_jax import batch as batch_layout
from vclr_jax import global_batches
from vclr_jax.train_step import make_mesh

FRAME_SIZE = (24, 40)


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
