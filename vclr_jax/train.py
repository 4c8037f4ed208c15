"""The pretraining loop: state creation or resume, data, the SPMD step, logging, checkpoints."""

from __future__ import annotations

import logging
import shlex
import sys
from typing import Iterator, Sequence

import jax
import ml_collections
import numpy as np

from vclr_jax import batch as batch_layout
from vclr_jax import checkpointing
from vclr_jax import cli_errors
from vclr_jax import config_checks
from vclr_jax import global_batches
from vclr_jax import profiling
from vclr_jax import train_state as train_state_lib
from vclr_jax import train_step as train_step_lib
from vclr_jax import training_loop
from vclr_jax.in_memory_data import InMemoryVideos, make_videos

IN_MEMORY_FRAMES = 16
# The stop message after a divergence proposes this fraction of the learning rate.
LOWER_LR_FACTOR = 0.1
# How long the other hosts wait for process 0's file work (moving checkpoints aside), or
# process 0 for theirs (reading config.json); on a slow shared filesystem that can take minutes.
FILE_WORK_TIMEOUT_S = 600
RESUME_FLAGS = ('--config.checkpoint.resume_step', '--config.optim.base_lr')


def num_train_videos(config: ml_collections.ConfigDict) -> int:
  if config.data.source == 'in_memory':
    return config.data.in_memory_videos
  from input_pipeline import records  # TensorFlow only for real data
  return records.read_index(records.source_dir(config.data), config.data.split)['num_videos']


def host_batches(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict[str, np.ndarray]]:
  """This host's share of every global batch from ``start_step`` on."""
  per_host = config.batch_size // jax.process_count()
  clips = dict(clip_length=config.data.clip_length, clip_stride=config.data.clip_stride)
  if config.data.source == 'in_memory':
    num_frames = max(IN_MEMORY_FRAMES, batch_layout.min_video_frames(**clips))
    videos = make_videos(config.data.in_memory_videos, num_frames,
                         tuple(config.data.frame_size), config.seed)
    return InMemoryVideos(videos, batch_size=per_host, seed=config.seed,
                          process_index=jax.process_index(),
                          process_count=jax.process_count(), **clips).iterate(start_step)
  from input_pipeline import record_stream
  from input_pipeline import records
  from input_pipeline import train_reader
  return train_reader.make_train_iterator(
      records.source_dir(config.data), config.data.split, batch_size=per_host,
      frame_size=tuple(config.data.frame_size), seed=config.seed, start_step=start_step,
      **clips,
      options=record_stream.ReaderOptions.from_config(config.data))


def check_same_structure(loaded, template, source: str) -> None:
  flat_loaded = dict(jax.tree_util.tree_leaves_with_path(loaded))
  flat_template = dict(jax.tree_util.tree_leaves_with_path(template))
  missing = sorted(jax.tree_util.keystr(k) for k in flat_template.keys() - flat_loaded.keys())
  unexpected = sorted(jax.tree_util.keystr(k) for k in flat_loaded.keys() - flat_template.keys())
  if missing or unexpected:
    raise ValueError(f'{source} does not match this model (config.model): missing {missing[:10]}, '
                     f'unexpected {unexpected[:10]}.')
  for key, value in flat_template.items():
    if np.shape(flat_loaded[key]) != np.shape(value):
      raise ValueError(f'{source}: {jax.tree_util.keystr(key)} has shape '
                       f'{np.shape(flat_loaded[key])}, the model expects {np.shape(value)}.')


def load_initial_weights(path: str, state: train_state_lib.TrainState) -> dict:
  """{'params', 'batch_stats'} for the online network from a run, Orbax or PyTorch checkpoint."""
  template = {'params': state.params, 'batch_stats': state.batch_stats}
  if path.endswith(config_checks.PYTORCH_SUFFIXES):
    from vclr_jax.interop import load_pytorch_variables
    variables = load_pytorch_variables(path, jax.device_get(template))
  else:
    variables, _ = checkpointing.load_encoder_variables(path)
  check_same_structure(variables, template, f'config.init_from={path}')
  return variables


def move_aside_later_checkpoints(workdir: str, step: int) -> None:
  """Process 0 moves the checkpoints after ``step`` aside; every process waits for it."""
  if jax.process_index() == 0:
    aside, moved = checkpointing.move_aside_after(workdir, step)
    if moved:
      logging.warning('config.checkpoint.resume_step=%d: moved the later checkpoints %s to %s '
                      '(not deleted). Drop the flag when restarting this run later.',
                      step, moved, aside)
  training_loop.wait_for_every_host('moved_aside_later_checkpoints', FILE_WORK_TIMEOUT_S)


def initial_state(config, num_videos: int, mesh) -> train_state_lib.TrainState:
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  create = jax.jit(lambda rng: train_state_lib.create_train_state(config, num_videos, rng),
                   out_shardings=replicated)
  state = create(jax.random.key(config.seed))
  if config.init_from:
    variables = train_step_lib.replicate(load_initial_weights(config.init_from, state), mesh)
    state = state.replace(params=variables['params'], batch_stats=variables['batch_stats'],
                          ema_params=jax.tree.map(lambda x: x.copy(), variables['params']),
                          ema_batch_stats=jax.tree.map(lambda x: x.copy(), variables['batch_stats']))
    logging.info('Initialised the online and key encoders from %s', config.init_from)
  return state


def describe_step(step: int, total: int, means: dict[str, float]) -> str:
  """The pretraining log line: losses, accuracies, learning rate, skipped steps."""
  losses = ' '.join(f'{name} {means[f"loss_{name}"]:.3f}' for name in ('inter', 'intra', 'video', 'order'))
  accs = ' '.join(f'{name} {means[f"{name}_acc"]:.2f}' for name in ('inter', 'intra', 'video', 'order'))
  line = (f'step {step}/{total} | loss {means["loss"]:.4f} ({losses}) | acc {accs} | '
          f'lr {means["learning_rate"]:.3g}')
  if means['skipped_nonfinite'] > 0:
    line += f' | {means["skipped_nonfinite"]:.0%} of these steps non-finite, not applied'
  if means.get('skipped_examples', 0) > 0:
    line += f' | skipped_examples {means["skipped_examples"]:.0f} (damaged records, see warnings)'
  return line


def resume_command(argv: Sequence[str], step: int, base_lr: float) -> str:
  """The pretraining command ``argv`` (flags only) resuming from ``step`` at ``base_lr``."""
  kept, skip_value = [], False
  for arg in argv:
    if skip_value:
      skip_value = False
    elif arg in RESUME_FLAGS:
      skip_value = True  # the value follows as its own argument
    elif not arg.startswith(tuple(flag + '=' for flag in RESUME_FLAGS)):
      kept.append(arg)
  return shlex.join(['python', '-m', 'vclr_jax.main', *kept,
                     f'--config.checkpoint.resume_step={step}',
                     f'--config.optim.base_lr={base_lr:g}'])


def last_trusted_checkpoint(kept_steps: Sequence[int], first_skipped: int) -> int | None:
  """The newest kept checkpoint from before the update that preceded the first skipped step.

  Step k's checkpoint holds the state after k updates. Update ``first_skipped`` was not
  applied, but update ``first_skipped - 1`` was, and a finite update can still blow the
  weights up (with base_lr=1e30 it gives weights of ~1e26, and only the next step is NaN).
  So checkpoint ``first_skipped - 1`` and every later one (they hold the same weights) are
  not trusted; the newest one before them is.
  """
  trusted = [step for step in kept_steps if step <= first_skipped - 2]
  return max(trusted) if trusted else None


def divergence_message(*, in_a_row: int, last_step: int, max_in_a_row: int, workdir: str,
                       kept_steps: Sequence[int], base_lr: float, argv: Sequence[str]) -> str:
  first_skipped = last_step - in_a_row + 1
  text = (f'Steps {first_skipped} to {last_step} ({in_a_row} in a row, '
          f'config.max_nonfinite_in_a_row={max_in_a_row}) had a non-finite loss, gradient or '
          'updated weights; none of them was applied. ')
  step = last_trusted_checkpoint(kept_steps, first_skipped)
  lower = base_lr * LOWER_LR_FACTOR
  if step is None:
    return text + (f'No kept checkpoint in {workdir} precedes step {first_skipped - 1} (kept: '
                   f'{list(kept_steps)}); start again in a new --workdir with a lower '
                   f'config.optim.base_lr (e.g. {lower:g}), or check the data.')
  return text + (
      f'The last checkpoint saved before the divergence is step {step} in '
      f'{checkpointing.absolute(workdir) / checkpointing.CHECKPOINT_DIR}. Resume from it with a lower '
      f'learning rate (later checkpoints are moved aside, not deleted):\n  '
      + resume_command(argv, step, lower))


class DivergedError(cli_errors.RunStopped, FloatingPointError):
  """Too many non-finite steps in a row; names the checkpoint to resume from and the command."""


def nonfinite_guard(max_in_a_row: int, describe_stop):
  """Raises once ``max_in_a_row`` steps in a row were not finite; ``describe_stop(step,
  in_a_row)`` gives the message."""

  def check(step: int, metrics):
    in_a_row = int(metrics['nonfinite_in_a_row'])
    if in_a_row >= max_in_a_row:
      raise DivergedError(describe_stop(step, in_a_row))

  return check


def previous_run_model(workdir: str, restored) -> ml_collections.ConfigDict | None:
  """config.model of the run's previous start (its config.json) when resuming, else None."""
  if restored is None:
    return None
  try:
    return checkpointing.load_run_config(workdir).model
  except FileNotFoundError:
    return None


def shuffle_bn_line(model: ml_collections.ConfigDict, num_devices: int,
                    previous: ml_collections.ConfigDict | None = None) -> str:
  """The key encoder's BN batches on ``num_devices`` (resolved config.model), and whether they
  changed from the ``previous`` run's (a resume on another device count)."""
  if model.key_bn != 'shuffle':
    return f'Key encoder BN: statistics synchronised over the {num_devices} devices.'
  layout = (model.shuffle_bn_devices, model.shuffle_bn_groups_per_device)
  line = (f'Shuffle-BN on {num_devices} devices: keys mixed among {layout[0]} neighbouring '
          f'devices, {layout[1]} BN groups per device')
  if previous is not None and previous.get('key_bn') == 'shuffle':
    before = (previous.get('shuffle_bn_devices'), previous.get('shuffle_bn_groups_per_device'))
    if before != layout:
      line += (f'; recomputed for {num_devices} devices (the run\'s previous start, '
               f'config.json: {before[0]} neighbouring devices, {before[1]} groups per device)')
  return line + '.'


@checkpointing.closes_managers
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       argv: Sequence[str] | None = None) -> dict[str, float]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint); returns the last logged metrics.

  ``argv`` (default: sys.argv[1:]) is the command line the divergence message repeats.
  """
  from clu import metric_writers  # imports TensorFlow for its summary writer

  argv = sys.argv[1:] if argv is None else argv
  mesh = train_step_lib.make_mesh()
  config_checks.validate_config(config, mesh.size, jax.process_count())  # before any write
  train_step_lib.resolve_shuffle_bn(config, mesh.size)
  num_videos = num_train_videos(config)
  steps_per_epoch = train_state_lib.steps_per_epoch(config, num_videos)
  total_steps = int(config.num_epochs * steps_per_epoch)
  learning_rate_fn = train_state_lib.learning_rate_schedule(config, num_videos)
  optimizer = train_state_lib.make_optimizer(config, num_videos)

  resume_step = config.checkpoint.resume_step
  if resume_step >= 0:
    move_aside_later_checkpoints(workdir, resume_step)
  manager = checkpointing.make_manager(workdir, config.checkpoint)
  state = initial_state(config, num_videos, mesh)
  restored = checkpointing.restore_latest(manager, state)
  if restored is not None:
    # The in-a-row count starts again in every process, so a rerun with a changed config
    # (a lower learning rate) gets max_nonfinite_in_a_row fresh tries.
    state = restored.replace(
        nonfinite_in_a_row=train_step_lib.replicate(np.zeros((), np.int32), mesh))
    logging.info('Resumed from %s at step %d.', manager.directory, int(state.step))
  else:
    # The initial state is a checkpoint too: a divergence in the first steps of a run, whose
    # first saved step may already hold blown-up weights, can go back to it.
    checkpointing.save(manager, 0, state, force=True)
  # Before config.json is rewritten: it still holds the previous start's resolved layout. Every
  # host reads it before process 0 rewrites it (a host reading it mid-write finds it empty).
  logging.info(shuffle_bn_line(config.model, mesh.size, previous_run_model(workdir, restored)))
  training_loop.wait_for_every_host('read_run_config', FILE_WORK_TIMEOUT_S)
  if jax.process_index() == 0:
    checkpointing.write_run_config(workdir, config)
  start_step = int(jax.device_get(state.step))

  # TensorBoard on the first host only; the readable log line below replaces clu's logging writer.
  writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir)) \
      if jax.process_index() == 0 else metric_writers.MultiWriter([])
  writer.write_hparams({k: v for k, v in config.to_dict().items() if not isinstance(v, dict)})
  train_step = train_step_lib.make_train_step(config, mesh, optimizer, learning_rate_fn)
  host_iterator = host_batches(config, start_step)
  batches = global_batches.prefetch_to_mesh(host_iterator, mesh, config.data.prefetch)
  logging.info('Training %s steps (%d per epoch, %d devices, %d hosts) from step %d in %s.',
               total_steps, steps_per_epoch, mesh.size, jax.process_count(), start_step, workdir)

  def describe_stop(step: int, in_a_row: int) -> str:
    manager.wait_until_finished()
    return divergence_message(
        in_a_row=in_a_row, last_step=step, max_in_a_row=config.max_nonfinite_in_a_row,
        workdir=workdir, kept_steps=manager.all_steps(read=True), base_lr=config.optim.base_lr,
        argv=argv)

  result = training_loop.run(
      step_fn=train_step, state=state, batches=batches, manager=manager, mesh=mesh,
      start_step=start_step, total_steps=total_steps, batch_size=config.batch_size,
      log_every_steps=config.log_every_steps,
      describe=lambda step, means: describe_step(step, total_steps, means),
      log=logging.info, writer=writer,
      check_previous=nonfinite_guard(config.max_nonfinite_in_a_row, describe_stop),
      window_extras=lambda s: {
          'nonfinite_total': float(jax.device_get(s.nonfinite_total)),
          # this host's reader (input_pipeline/damage.py); in-memory data has none
          'skipped_examples': float(getattr(host_iterator, 'skipped_examples', 0))},
      host_stop=lambda: getattr(host_iterator, 'stop_error', None),
      profile=profiling.ProfileWindow.from_config(workdir, config.profile, logging.info))
  if jax.process_index() == 0:
    from vclr_jax import plots  # matplotlib and tensorboard, once at the end
    logging.info('Training curves: %s', plots.write_curves(workdir))
  return result.last_metrics
