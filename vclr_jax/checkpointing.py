"""Orbax checkpoints of the whole TrainState, the run's config, and encoder loading.

A run directory holds ``config.json`` (the resolved config) and ``checkpoints/<step>/``
written by an Orbax CheckpointManager. ``init_from`` may name a run directory, one of its
step directories, or a directory written by ``ocp.StandardCheckpointer`` holding
``{'params', 'batch_stats'}`` (the PyTorch converter's output).
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
MOVED_ASIDE_PREFIX = 'checkpoints_moved_aside_'


def make_manager(workdir: str, checkpoint_config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=checkpoint_config.keep,
      # Orbax never deletes a step that is a multiple of keep_period.
      keep_period=checkpoint_config.get('keep_every_steps') or None,
      save_interval_steps=checkpoint_config.every_steps,
      enable_async_checkpointing=checkpoint_config.async_save,
      create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
  """Saves ``state`` (at ``step``) when the interval says so, or always with ``force``."""
  if step == manager.latest_step():
    return False
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore_latest(manager: ocp.CheckpointManager, target):
  """The latest checkpoint restored into ``target``'s structure and shardings, or None."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def move_aside_after(workdir: str, step: int) -> tuple[str | None, list[int]]:
  """Makes checkpoint ``step`` the latest: later ones move to a dated folder, never deleted.

  Returns the folder (None when nothing was later) and the steps moved. Raises when
  ``step`` is not a kept checkpoint of ``workdir``.
  """
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  steps = _step_dirs(directory)
  if step not in steps:
    raise FileNotFoundError(
        f'config.checkpoint.resume_step={step}: no such checkpoint in {directory}; kept steps: '
        f'{sorted(steps)}. Pick one of them, or -1 for the latest.')
  later = sorted(s for s in steps if s > step)
  if not later:
    return None, []
  aside = os.path.join(workdir, MOVED_ASIDE_PREFIX + time.strftime('%Y%m%d_%H%M%S', time.gmtime()))
  os.makedirs(aside)
  for s in later:
    os.rename(steps[s], os.path.join(aside, str(s)))
  return aside, later


def write_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {workdir} is not a vclr_jax run directory '
                            '(python -m vclr_jax.main writes config.json there).')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _step_dirs(directory: str) -> dict[int, str]:
  if not os.path.isdir(directory):
    return {}
  return {int(name): os.path.join(directory, name) for name in os.listdir(directory)
          if name.isdigit()}


def _encoder_checkpoint_path(path: str, step: int | None) -> tuple[str, int | None]:
  """Resolves a run dir / checkpoints dir / step dir / plain Orbax dir to (item path, step)."""
  path = os.path.abspath(path)
  for directory in (os.path.join(path, CHECKPOINT_DIR), path):
    steps = _step_dirs(directory)
    if steps:
      chosen = max(steps) if step is None else step
      if chosen not in steps:
        raise FileNotFoundError(f'No checkpoint for step {chosen} in {directory}; '
                                f'available: {sorted(steps)}.')
      step_dir = steps[chosen]
      item = os.path.join(step_dir, 'default')
      return (item if os.path.isdir(item) else step_dir), chosen
  if os.path.isdir(path):
    return path, step
  raise FileNotFoundError(f'{path} is neither a run directory nor an Orbax checkpoint.')


def load_encoder_variables(path: str, step: int | None = None) -> tuple[dict, int | None]:
  """The online network's {'params', 'batch_stats'} as NumPy, and the checkpoint's step.

  ``path`` is a run directory (latest step unless ``step``), one checkpoint step directory,
  or a StandardCheckpointer directory of {'params', 'batch_stats'}.
  """
  item_path, found_step = _encoder_checkpoint_path(path, step)
  restored = ocp.StandardCheckpointer().restore(item_path)
  if not isinstance(restored, dict) or 'params' not in restored:
    raise ValueError(f'{item_path} holds no "params": not a vclr_jax checkpoint.')
  variables = {name: jax.tree.map(np.asarray, restored[name]) for name in ('params', 'batch_stats')}
  if found_step is None and 'step' in restored:
    found_step = int(restored['step'])
  return variables, found_step
