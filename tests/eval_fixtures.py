"""Shared by the tests/test_eval_*.py files: a tiny pretraining run directory on disk."""

import jax
import numpy as np

from vclr_jax import checkpointing
from vclr_jax import train_state


def make_pretraining_run(workdir, config, steps=(1,)):
  """config.json and one checkpoint per step; each later step scales the weights, so that
  different steps give different features."""
  config.checkpoint.async_save = False
  state = train_state.create_train_state(config, config.data.in_memory_videos,
                                         jax.random.key(config.seed))
  manager = checkpointing.make_manager(str(workdir), config.checkpoint)
  checkpointing.write_run_config(str(workdir), config)
  for index, step in enumerate(steps):
    scaled = jax.tree.map(lambda x: x * np.float32(1 + 0.5 * index), state.params)
    checkpointing.save(manager, step, state.replace(params=scaled), force=True)
  manager.wait_until_finished()
  return str(workdir)


def make_encoder_run(workdir, config, step=1):
  """A run directory holding only what the evaluation tools read: config.json and, at
  ``step``, the online network's {'params', 'batch_stats'} (no train state, so no optimizer or
  queues to build: seconds instead of a minute)."""
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  model = train_state.build_model(config.model)
  size = config.data.image_size
  variables = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, 3, size, size, 3)),
                                             train=False))(jax.random.key(config.seed))
  checkpointing.write_run_config(str(workdir), config)
  item = workdir / checkpointing.CHECKPOINT_DIR / str(step) / 'default'
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(item.absolute(), dict(variables))
  return str(workdir)
