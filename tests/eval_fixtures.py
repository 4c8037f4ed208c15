"""Shared by the evaluation tests: a tiny pretraining run directory on disk."""

import jax
import numpy as np

from vclr_jax import batch as batch_layout
from vclr_jax import checkpointing
from vclr_jax import train_state


def make_encoder_run(workdir, config, step=1, steps=None):
  """A run directory holding only what the evaluation tools read: config.json and, at
  ``step``, the online network's {'params', 'batch_stats'} (no train state, so no optimizer or
  queues to build: seconds instead of a minute). With ``steps``, one checkpoint per step, each
  later one with the weights scaled, so that different steps give different features."""
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  model = train_state.build_model(config.model)
  size = config.data.image_size
  frames = jnp.zeros((1,) + batch_layout.frames_shape(3, (size, size), config.data.clip_length))
  variables = jax.jit(lambda rng: model.init(rng, frames, train=False))(
      jax.random.key(config.seed))
  # A ViT has no BatchNorm: its checkpoints hold empty statistics, as a training run's do.
  variables = {'batch_stats': {}, **variables}
  checkpointing.write_run_config(str(workdir), config)
  for index, saved_step in enumerate((step,) if steps is None else steps):
    scaled = dict(variables, params=jax.tree.map(lambda x: x * np.float32(1 + 0.5 * index),
                                                 variables['params']))
    item = workdir / checkpointing.CHECKPOINT_DIR / str(saved_step) / 'default'
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(item.absolute(), scaled)
  return str(workdir)
