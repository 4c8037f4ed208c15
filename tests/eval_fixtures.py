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
