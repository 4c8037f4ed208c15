"""One of two processes running vclr_jax.training_loop on a toy step (tests/test_loop_stop.py).

argv: coordinator port, process id, workdir, the step from which process 1's input reports
an error, and optionally the seconds process 1 spends longer tracing the step (a slow
compile). Prints 'STOPPED <type> <message>' for the error the loop ends with.
"""

import os
import sys
import time

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import struct  # noqa: E402

from configs import demo  # noqa: E402
from vclr_jax import checkpointing  # noqa: E402
from vclr_jax import global_batches  # noqa: E402
from vclr_jax import train_step  # noqa: E402
from vclr_jax import training_loop  # noqa: E402


class InputError(RuntimeError):
  pass


@struct.dataclass
class ToyState:
  step: jax.Array
  total: jax.Array


def main(port: int, process_id: int, workdir: str, error_from_step: int,
         compile_delay_s: float) -> None:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2,
                             process_id=process_id)
  mesh = train_step.make_mesh()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = ToyState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
                   total=jax.device_put(jnp.zeros((), jnp.float32), replicated))

  @jax.jit
  def step_fn(state, batch):
    if process_id == 1:
      time.sleep(compile_delay_s)  # runs once, while tracing
    new = ToyState(step=state.step + 1, total=state.total + batch['x'].sum())
    return new, {'total': new.total}

  consumed = []

  def batches():
    while True:
      consumed.append(len(consumed) + 1)
      yield global_batches.to_global({'x': np.ones((2,), np.float32)}, mesh)

  def host_stop():
    # Process 1's input goes bad once it has handed out batch ``error_from_step``.
    if process_id == 1 and consumed and consumed[-1] >= error_from_step:
      return InputError('shard 3 of process 1 is damaged.')
    return None

  checkpoint_config = demo.get_config().checkpoint
  checkpoint_config.update(every_steps=1000, async_save=False)
  manager = checkpointing.make_manager(workdir, checkpoint_config)
  try:
    training_loop.run(step_fn=step_fn, state=state, batches=batches(), manager=manager,
                      mesh=mesh, start_step=0, total_steps=100, batch_size=4,
                      log_every_steps=1000, describe=lambda step, means: '', log=print,
                      host_stop=host_stop)
  except RuntimeError as error:
    print('STOPPED', type(error).__name__, error, flush=True)
  print('SAVED', manager.all_steps(), flush=True)


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]),
       float(sys.argv[5]) if len(sys.argv) > 5 else 0.0)
