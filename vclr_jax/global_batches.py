"""Per-host NumPy batches in, global jax.Arrays sharded over the data axis out, prefetched.

Every host passes its own slice of the global batch and places it on its own devices: one
``jax.device_put`` call puts each device's rows on it, then
``jax.make_array_from_single_device_arrays`` joins the shards of all hosts into one array
sharded over the mesh's ``data`` axis. One
process or many, one device or a pod, it is the same code. A background thread keeps a few
batches on the devices ahead of the train step, overlapping host-to-device copies with
compute.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def to_global(host_batch: dict[str, np.ndarray], mesh: Mesh, axis: str = 'data') -> dict[str, jax.Array]:
  """This host's rows of every leaf, placed on its devices of ``mesh``, as global arrays.

  The host's rows go to its devices in the order of the global rows those hold, as
  ``jax.make_array_from_process_local_data`` places them; that function placed 906 K400
  videos/s on an H200 (one process), below the train step's 1,160, where ``jax.device_put``
  placed 14,030 (docs/performance.md). benchmarks/input_pipeline.py --placement_only times
  both paths.
  """
  sharding = NamedSharding(mesh, P(axis))
  return {name: _place(value, sharding) for name, value in host_batch.items()}


def _place(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  local_devices = len(sharding.mesh.local_devices)
  if value.shape[0] % local_devices:
    raise ValueError(f'A host batch of {value.shape[0]} rows does not split over this host\'s '
                     f'{local_devices} devices.')
  rows = value.shape[0] // local_devices
  global_shape = (rows * sharding.mesh.size,) + value.shape[1:]
  # This host's devices in the order of the global rows they hold.
  placed_rows = sharding.addressable_devices_indices_map(global_shape)
  devices = sorted(placed_rows, key=lambda device: placed_rows[device][0].start or 0)
  shards = jax.device_put([value[i * rows:(i + 1) * rows] for i in range(local_devices)], devices)
  return jax.make_array_from_single_device_arrays(global_shape, sharding, shards)


def prefetch_to_mesh(host_batches: Iterable[dict[str, np.ndarray]], mesh: Mesh,
                     size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Yields global batches, with up to ``size`` of them already transferred."""
  buffer: queue.Queue = queue.Queue(maxsize=max(1, size))
  done = object()

  def produce():
    try:
      for host_batch in host_batches:
        buffer.put(to_global(host_batch, mesh))
      buffer.put(done)
    except BaseException as error:  # handed to the consumer, which re-raises it
      buffer.put(error)

  threading.Thread(target=produce, daemon=True, name='prefetch_to_mesh').start()
  while True:
    item = buffer.get()
    if item is done:
      return
    if isinstance(item, BaseException):
      raise item
    yield item
