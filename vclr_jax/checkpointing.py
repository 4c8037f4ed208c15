"""Orbax checkpoints of the whole TrainState, the run's config, and encoder loading.

A run directory holds ``config.json`` (the resolved config) and ``checkpoints/<step>/``
written by an Orbax CheckpointManager. ``init_from`` may name a run directory, one of its
step directories, or a directory written by ``ocp.StandardCheckpointer`` holding
``{'params', 'batch_stats'}`` (the PyTorch converter's output).

Paths go through etils.epath, so a workdir may be any path Orbax accepts (``gs://...``).
"""

from __future__ import annotations

import functools
import json
import logging
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vclr_jax import cli_errors
from vclr_jax.cli_errors import NoCheckpointError
from vclr_jax.cli_errors import UserError
from vclr_jax.models import video3d

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
MOVED_ASIDE_PREFIX = 'checkpoints_moved_aside_'
ITEM_METADATA = '_METADATA'  # Orbax's file in every saved item (StandardCheckpointer, manager)
ITEM_DIR = 'default'  # the manager's item folder inside a step folder


def absolute(path) -> epath.Path:
  """``path`` as an absolute epath (Orbax requires one); a URL such as gs://... stays as it is."""
  path = epath.Path(path)
  return path if path.is_absolute() else path.resolve()


def make_manager(workdir: str, checkpoint_config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=checkpoint_config.keep,
      # Orbax never deletes a step that is a multiple of keep_period.
      keep_period=checkpoint_config.get('keep_every_steps') or None,
      save_interval_steps=checkpoint_config.every_steps,
      enable_async_checkpointing=checkpoint_config.async_save,
      create=True)
  manager = ocp.CheckpointManager(absolute(workdir) / CHECKPOINT_DIR, options=options)
  if _managers_of_calls:
    _managers_of_calls[-1].append(manager)
  return manager


# The managers made during each active call of a closes_managers function, innermost last.
_managers_of_calls: list[list[ocp.CheckpointManager]] = []


def closes_managers(function):
  """Decorator: every manager make_manager makes during a call of ``function`` is closed when
  the call ends, however it ends (an error, an interrupt, a stop). Closing waits for the save
  in flight, so the newest step on disk is whole, and leaves no Orbax thread to fail at the
  interpreter's exit ("cannot schedule new futures after interpreter shutdown"). After a full
  disk they stay open: closing would print each pending write's failure, and the entry point
  exits at once instead (cli_errors.guard)."""

  @functools.wraps(function)
  def call(*args, **kwargs):
    made = []
    _managers_of_calls.append(made)
    try:
      result = function(*args, **kwargs)
    except BaseException as error:
      if not cli_errors.is_disk_full(error):
        for manager in made:
          _close_after_error(manager)
      raise
    finally:
      _managers_of_calls.remove(made)
    for manager in made:
      manager.close()
    return result

  return call


def _close_after_error(manager: ocp.CheckpointManager) -> None:
  """Closes ``manager``; a failure of its last save is logged in one line, not raised over
  the error that ended the run."""
  try:
    manager.close()
  except Exception as error:  # pylint: disable=broad-except
    logging.warning('The save in flight when the run ended failed (%s); the newest complete '
                    'checkpoint is kept.', ' '.join(str(error).split())[:300])


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


def move_aside_after(workdir, step: int) -> tuple[epath.Path | None, list[int]]:
  """Makes checkpoint ``step`` the latest: later ones move to a dated folder, never deleted.

  Returns the folder (None when nothing was later) and the steps moved. Raises when
  ``step`` is not a kept checkpoint of ``workdir``.
  """
  directory = epath.Path(workdir) / CHECKPOINT_DIR
  steps = step_dirs(directory)
  if step not in steps:
    raise FileNotFoundError(
        f'config.checkpoint.resume_step={step}: no such checkpoint in {directory}; kept steps: '
        f'{sorted(steps)}. Pick one of them, or -1 for the latest.')
  later = sorted(s for s in steps if s > step)
  if not later:
    return None, []
  aside = epath.Path(workdir) / (MOVED_ASIDE_PREFIX + time.strftime('%Y%m%d_%H%M%S', time.gmtime()))
  aside.mkdir(parents=True)
  for s in later:
    steps[s].rename(aside / str(s))
  return aside, later


def write_run_config(workdir, config: ml_collections.ConfigDict) -> None:
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def load_run_config(workdir) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: {workdir} is not a vclr_jax run directory '
                            '(python -m vclr_jax.main writes config.json there).')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def require_frame_backbone(run_config: ml_collections.ConfigDict, workdir, what: str) -> None:
  """Raises UserError for a run with a 3D backbone, which ``what`` cannot take: Grad-CAM and
  the snippet features are defined per frame."""
  architecture = run_config.model.get('architecture', 'resnet')
  if architecture in video3d.ARCHITECTURES:
    raise UserError(f'{workdir} pretrained a 3D backbone (config.model.architecture='
                    f'{architecture!r}) on clips; {what} takes frames of 2D ResNets and ViTs '
                    'only. '
                    'Evaluate it on clips with python -m vclr_jax.evaluate (linear, retrieval, '
                    'finetune), or export the encoder (python -m vclr_jax.export '
                    '--format=torchvision) to use it in PyTorch.')


def step_dirs(directory) -> dict[int, epath.Path]:
  """{step: folder} of the finished checkpoints in ``directory`` (Orbax writes a step under a
  temporary name and renames it when complete, so a half-written step is not listed)."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return {}
  return {int(child.name): child for child in directory.iterdir() if child.name.isdigit()}


def directory_bytes(directory) -> int:
  """The size of every file under ``directory``."""
  return sum((root / name).stat().length
             for root, _, files in epath.Path(directory).walk() for name in files)


def _no_checkpoint(path: epath.Path) -> NoCheckpointError:
  return NoCheckpointError(
      f'{path} holds no checkpoint (no {CHECKPOINT_DIR}/<step>/ folder and no Orbax item).\n'
      f'{path}: train it first (python -m vclr_jax.main --workdir={path}, which saves every '
      'checkpoint.every_steps), or name a run or checkpoint directory that has one.')


def encoder_checkpoint_path(path, step: int | None) -> tuple[epath.Path, int | None]:
  """Resolves a run dir / checkpoints dir / step dir / plain Orbax dir to (item path, step)."""
  path = absolute(path)
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist.\n{path}: check the path.')
  for directory in (path / CHECKPOINT_DIR, path):
    steps = step_dirs(directory)
    if steps:
      chosen = max(steps) if step is None else step
      if chosen not in steps:
        raise NoCheckpointError(f'No checkpoint for step {chosen} in {directory}.\n'
                                f'{directory}: pick one of the steps {sorted(steps)}.')
      item = steps[chosen] / ITEM_DIR
      return (item if item.is_dir() else steps[chosen]), chosen
  for item in (path / ITEM_DIR, path):  # one step folder, or a StandardCheckpointer folder
    if (item / ITEM_METADATA).exists():
      return item, step
  raise _no_checkpoint(path)


def load_encoder_variables(path: str, step: int | None = None) -> tuple[dict, int | None]:
  """The online network's {'params', 'batch_stats'} as NumPy, and the checkpoint's step.

  ``path`` is a run directory (latest step unless ``step``), one checkpoint step directory,
  or a StandardCheckpointer directory of {'params', 'batch_stats'}.
  """
  item_path, found_step = encoder_checkpoint_path(path, step)
  restored = ocp.StandardCheckpointer().restore(item_path)
  if not isinstance(restored, dict) or 'params' not in restored:
    raise ValueError(f'{item_path} holds no "params": not a vclr_jax checkpoint.')
  variables = {name: jax.tree.map(np.asarray, restored[name]) for name in ('params', 'batch_stats')}
  if found_step is None and 'step' in restored:
    found_step = int(restored['step'])
  return variables, found_step
