"""One of two processes placing host batches as global arrays (tests/test_global_batches.py).

argv: coordinator port, process id. Each process has 4 CPU devices and passes its own host
batches (the batch layout's random batches, seeded by step and process) through
prefetch_to_mesh; it checks its shards against its rows and the whole global array against
both hosts' batches, then prints 'PLACED <batches>'.
"""

import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from vclr_jax import batch as batch_layout  # noqa: E402
from vclr_jax import global_batches  # noqa: E402
from vclr_jax import train_step  # noqa: E402

PROCESSES, HOST_BATCH, STEPS, FRAME_SIZE = 2, 8, 3, (24, 40)


def host_batch(step: int, process: int) -> dict[str, np.ndarray]:
  return batch_layout.random_batch(HOST_BATCH, FRAME_SIZE, seed=100 * step + process)


def main(port: int, process_id: int) -> None:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=PROCESSES,
                             process_id=process_id)
  mesh = train_step.make_mesh()
  assert mesh.size == 8 and len(mesh.local_devices) == 4
  mine = [host_batch(step, process_id) for step in range(STEPS)]
  placed = list(global_batches.prefetch_to_mesh(iter(mine), mesh, size=2))
  assert len(placed) == STEPS
  for step, (host, on_devices) in enumerate(zip(mine, placed)):
    both = [host_batch(step, process) for process in range(PROCESSES)]
    for name, array in on_devices.items():
      assert array.sharding.spec == P('data') and array.shape[0] == PROCESSES * HOST_BATCH
      for shard in array.addressable_shards:  # this host's rows, 2 per device
        rows = shard.index[0]
        local = slice(rows.start - process_id * HOST_BATCH, rows.stop - process_id * HOST_BATCH)
        assert rows.stop - rows.start == 2
        np.testing.assert_array_equal(np.asarray(shard.data), host[name][local], err_msg=name)
      np.testing.assert_array_equal(multihost_utils.process_allgather(array, tiled=True),
                                    np.concatenate([b[name] for b in both]), err_msg=name)
  print('PLACED', len(placed), flush=True)


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]))
