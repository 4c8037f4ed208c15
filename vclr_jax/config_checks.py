"""Every check of a config, run before anything is written to the workdir.

``validate_config`` collects all problems of a config at once (choices, positive sizes,
divisibility over devices and hosts, the queue size, paths that must exist) and raises one
ConfigError listing them, so a user fixes a command line in one go instead of one error per
rerun, and a failed start leaves no config.json, events file or checkpoints/ behind.
That includes what the readers would stop on later and the index files already say (the
records folder, each split's index and frame index: data_problems). ``validate_eval_config``
does the same for evaluation and fine-tuning configs.
The step's own rules (check_divisibility, check_queue_size, clip_config_problems,
check_bn_config) live here too, so every rule lives in one place; train_step.py and
train_state.py build from a config that passed them.
"""

from __future__ import annotations

from typing import Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from vclr_jax import checkpointing
from vclr_jax import train_state as train_state_lib
from vclr_jax import train_step as train_step_lib
from vclr_jax.cli_errors import ConfigError
from vclr_jax.cli_errors import UserError
from vclr_jax.models import video3d
from vclr_jax.models.resnet import STAGE_BLOCKS
from vclr_jax.models.vclr import ARCHITECTURES, ORDER_NORMS, has_batch_norm, vit_spec

DATA_SOURCES = ('records', 'tfds', 'in_memory')
PYTORCH_SUFFIXES = ('.pth', '.pt', '.tar', '.safetensors')  # init_from files read by interop

# Sizes and counts that must be at least 1 (a 0 batch divides by zero, a 0 interval never logs).
POSITIVE_INTEGERS = ('batch_size', 'queue_size', 'log_every_steps', 'max_nonfinite_in_a_row',
                     'data.image_size', 'model.embed_dim', 'checkpoint.every_steps',
                     'checkpoint.keep')
POSITIVE_NUMBERS = ('num_epochs', 'optim.base_lr', 'model.width_multiplier', 'loss.temperature')


def choices() -> dict[str, tuple]:
  """Config key -> allowed values, from the tables the code itself dispatches on."""
  table = {f'model.{key}': tuple(allowed) for key, allowed in train_step_lib.BN_MODES.items()}
  table.update({
      'model.order_norm': tuple(ORDER_NORMS),
      'model.architecture': ARCHITECTURES,
      'optim.schedule': train_state_lib.SCHEDULES,
      'model.compute_dtype': tuple(train_state_lib.COMPUTE_DTYPES),
      'model.depth': tuple(STAGE_BLOCKS),
      'data.source': DATA_SOURCES,
  })
  return table


def clip_config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with config.data.clip_length / clip_stride for config.model.architecture."""
  architecture, data = config.model.architecture, config.data
  if architecture not in ARCHITECTURES:
    return []  # reported with the other choices
  problems = [f'config.data.{key}={data[key]} must be a positive integer: set it to 1 or more.'
              for key in ('clip_length', 'clip_stride')
              if not (isinstance(data[key], int) and data[key] >= 1)]
  if problems:
    return problems
  if architecture not in video3d.ARCHITECTURES and data.clip_length > 1:
    problems.append(f'config.model.architecture={architecture!r} encodes single frames, but '
                    f'config.data.clip_length={data.clip_length}: set clip_length=1, or a 3D '
                    f"architecture ('r3d_18', 's3d').")
  if architecture in video3d.ARCHITECTURES:
    min_frames, min_pixels = video3d.MIN_CLIP[architecture]
    if data.clip_length == 1:
      problems.append(f'config.model.architecture={architecture!r} encodes clips, but '
                      'config.data.clip_length=1 gives single frames: set config.data.clip_length '
                      f'to {max(2, min_frames)} or more.')
    elif data.clip_length < min_frames:
      problems.append(f'config.model.architecture={architecture!r} needs clips of at least '
                      f'{min_frames} frames: raise config.data.clip_length={data.clip_length}.')
    if data.image_size < min_pixels:
      problems.append(f'config.model.architecture={architecture!r} needs crops of at least '
                      f'{min_pixels} px: raise config.data.image_size={data.image_size}.')
  return problems


def check_bn_config(model_config: ml_collections.ConfigDict) -> None:
  for key, allowed in BN_MODES.items():
    if model_config[key] not in allowed:
      raise ValueError(f'config.model.{key} must be one of {allowed}, got {model_config[key]!r}.')


def check_bn_config(model_config: ml_collections.ConfigDict) -> None:
  for key, allowed in train_step_lib.BN_MODES.items():
    if model_config[key] not in allowed:
      raise ValueError(f'config.model.{key} must be one of {allowed}, got {model_config[key]!r}.')


def check_divisibility(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Errors for batch sizes that the step's reshapes and shuffle-BN cannot split evenly."""
  if config.batch_size % num_devices:
    raise ValueError(f'config.batch_size={config.batch_size} must be divisible by the number of '
                     f'devices ({num_devices}).')
  if config.model.key_bn != 'shuffle' or not has_batch_norm(config.model.architecture):
    return
  key_frames = train_step_lib.key_pass_frames(config, num_devices)
  devices = train_step_lib.shuffle_bn_devices(config, num_devices)
  groups = train_step_lib.shuffle_bn_groups(config, num_devices)
  if not 1 <= devices <= num_devices or key_frames % devices:
    raise ValueError(
        f'config.model.shuffle_bn_devices={devices} must be between 1 and the {num_devices} '
        f'devices and divide the {key_frames} frames of a device in a key BN batch (6 x the '
        "per-device batch, or 1 x with config.model.bn_batching='reference'); 0 picks "
        f'{train_step_lib.default_shuffle_devices(key_frames, num_devices)}.')
  if devices == 1 and num_devices > 1:
    raise ValueError('config.model.shuffle_bn_devices=1 normalises every key with its own '
                     "query's batch: use 0 (automatic), 2 or more, or model.key_bn='sync'.")
  if key_frames % groups or key_frames // groups < 2:
    raise ValueError(
        f'Shuffle-BN normalises the {key_frames} frames of a device in a key BN batch in '
        f'{groups} groups (config.model.shuffle_bn_groups_per_device): the count must divide them and leave at '
        'least 2 frames per group; choose another config.batch_size or group count.')


def check_queue_size(config: ml_collections.ConfigDict) -> None:
  """Each queue is written in blocks of the global batch; a block must never straddle the end."""
  if config.queue_size % config.batch_size:
    raise ValueError(
        f'config.queue_size={config.queue_size} must be a multiple of config.batch_size='
        f'{config.batch_size}: every step writes the gathered keys in blocks of the global batch '
        '(k1, k2, k3 into the inter queue, k_v into the video queue). Pick e.g. queue_size='
        f'{max(1, config.queue_size // config.batch_size) * config.batch_size}.')


def _get(config: ml_collections.ConfigDict, key: str):
  for part in key.split('.'):
    config = config[part]
  return config


def _choice_problems(config) -> list[str]:
  problems = []
  for key, allowed in choices().items():
    value = _get(config, key)
    if value not in allowed:
      problems.append(f'config.{key}={value!r} is not one of {allowed}: pick one of them.')
  if config.model.compute_dtype == 'float64' and not jax.config.jax_enable_x64:
    problems.append("config.model.compute_dtype='float64' needs 64-bit JAX: set "
                    'JAX_ENABLE_X64=1 or use float32.')
  return problems


def _size_problems(config) -> list[str]:
  problems = []
  for key in POSITIVE_INTEGERS + POSITIVE_NUMBERS:
    value = _get(config, key)
    if not value > 0:
      problems.append(f'config.{key}={value} must be positive: set it to a value above 0.')
  if config.data.source == 'in_memory' and 0 < config.data.in_memory_videos < config.batch_size:
    problems.append(f'config.data.in_memory_videos={config.data.in_memory_videos} must be at '
                    f'least config.batch_size={config.batch_size}: raise it.')
  decay_epochs = list(config.optim.decay_epochs)
  if config.optim.schedule == 'step' and (
      decay_epochs != sorted(set(decay_epochs))
      or not all(config.optim.warmup_epochs <= e < config.num_epochs for e in decay_epochs)):
    problems.append(f'config.optim.decay_epochs={tuple(decay_epochs)} must be increasing epochs '
                    f'between config.optim.warmup_epochs={config.optim.warmup_epochs} and '
                    f'config.num_epochs={config.num_epochs}: fix the list.')
  if config.num_epochs <= config.optim.warmup_epochs:
    problems.append(f'config.num_epochs={config.num_epochs} must exceed '
                    f'config.optim.warmup_epochs={config.optim.warmup_epochs}: raise num_epochs '
                    'or lower warmup_epochs.')
  return problems


def _profile_problems(config) -> list[str]:
  """config.profile: a window of whole steps (num_steps 0 is off)."""
  start, count = config.profile.start_step, config.profile.num_steps
  if not (isinstance(count, int) and count >= 0):
    return [f'config.profile.num_steps={count!r} must be a whole number of steps, 0 (off) or '
            'more: e.g. 5.']
  if count and not (isinstance(start, int) and start >= 1):
    return [f'config.profile.start_step={start!r} must be a step of the run, 1 or later (after '
            'the first steps, which compile): e.g. 10.']
  return []


# configs/k400.py's BatchNorm settings: the only values a network without BatchNorm accepts.
BN_DEFAULTS = {'online_bn': 'per_device', 'key_bn': 'shuffle', 'bn_batching': 'fused',
               'shuffle_bn_devices': 0, 'shuffle_bn_groups_per_device': 0}


def _vit_problems(config) -> list[str]:
  """Settings that have no meaning for the backbone (BatchNorm's for a ViT, the patch
  projection's for the others) and the choice of optimiser."""
  model, problems = config.model, []
  if not has_batch_norm(model.architecture):
    problems += [f'config.model.{key}={model[key]!r} has no meaning for a network without '
                 f'BatchNorm ({model.architecture}): leave it at {default!r}.'
                 for key, default in BN_DEFAULTS.items() if model[key] != default]
    try:
      vit_spec(model)  # the pooling, and a width that the heads divide
    except ValueError as error:
      problems.append(str(error))
  elif model.get('freeze_patch_embedding', False):
    problems.append(f'config.model.freeze_patch_embedding freezes a ViT\'s patch projection; '
                    f'{model.architecture} has none: set it to False.')
  name = config.optim.get('name', 'sgd')
  if name not in train_state_lib.OPTIMIZERS:
    problems.append(f'config.optim.name={name!r} is not one of {train_state_lib.OPTIMIZERS}: '
                    'pick one of them.')
  return problems


def _layout_problems(config, num_devices: int, num_processes: int) -> list[str]:
  """Divisibility over devices and hosts, and the queue blocks (the step's own checks)."""
  if not config.batch_size > 0:
    return []  # already reported; every rule below divides by it
  problems = []
  if config.batch_size % num_processes:
    problems.append(f'config.batch_size={config.batch_size} must divide over the '
                    f'{num_processes} hosts: use a multiple of {num_processes}.')
  for check in (lambda: check_divisibility(config, num_devices),
                lambda: check_queue_size(config)):
    try:
      check()
    except ValueError as error:
      problems.append(str(error))
  return problems


def _path_problems(config) -> list[str]:
  problems = []
  if config.require_init_from and not config.init_from:
    problems.append('config.init_from is required by this config (the released run starts from '
                    'MoCo v2 ImageNet weights): pass '
                    '--config.init_from=/path/to/moco_v2_200ep_pretrain.pth.tar.')
  if config.init_from and not epath.Path(config.init_from).exists():
    problems.append(f'config.init_from={config.init_from} does not exist: give a run directory, '
                    "a checkpoint directory or a PyTorch file, or '' for random init.")
  elif config.init_from and not config.init_from.endswith(PYTORCH_SUFFIXES):
    try:
      checkpointing.encoder_checkpoint_path(config.init_from, None)
    except FileNotFoundError as error:
      problems.append(f'config.init_from: {" ".join(str(error).split())}')
  return problems


# What each reader needs of its split (data_problems): VCLR's training reader reads sampled
# frames through the frame index, every video long enough for the clips, and one shard or
# more per host; the TSN training reader one shard or more per host; the evaluation readers
# read whole records of any length, any number of shards per host.
VCLR_READER, TSN_READER, EVAL_READER = 'vclr', 'tsn', 'eval'


def _read_split_index(folder: str, split: str) -> dict | None:
  from input_pipeline import split_index  # no TensorFlow
  if split_index.is_tfds_dataset(folder):
    from input_pipeline import records  # TensorFlow only for a TFDS dataset
    return records.read_index(folder, split)
  return split_index.read_split_index(folder, split)


def data_problems(data: ml_collections.ConfigDict, splits: Sequence[tuple[str, str, str]],
                  num_processes: int, clips: tuple[int, int] = (1, 1)) -> list[str]:
  """What the readers would stop on, known from the index files alone: the records folder
  (or TFDS dataset) of ``data`` (a config's data block), the frame canvas, and each of
  ``splits``, (config key, split, reader) with reader one of VCLR_READER, TSN_READER,
  EVAL_READER (input_pipeline/split_index.py reads index.json and the frame index).
  ``clips``: (clip_length, clip_stride) of VCLR_READER."""
  from input_pipeline import split_index  # no TensorFlow
  problems = []
  if 'frame_size' in data:
    size = tuple(data.frame_size)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
      problems.append(f'config.data.frame_size={size} must be the (height, width) of the '
                      'frame canvas in pixels, both positive: e.g. (256, 340).')
  if data.source == 'records':
    folder = data.records_dir
    if not epath.Path(folder).exists():
      return problems + [f'config.data.records_dir={folder} does not exist: prepare the records '
                         '(python -m input_pipeline.prepare) or fix the path.']
  elif data.source == 'tfds':
    from input_pipeline import records  # TensorFlow only for a TFDS dataset
    try:
      folder = records.source_dir(data)
    except (UserError, FileNotFoundError) as error:
      return problems + [str(error)]
  else:
    return problems  # in-memory videos, or a source reported among the choices
  for key, split, reader in splits:
    try:
      index = _read_split_index(folder, split)
    except split_index.SplitMismatchError as error:
      problems.append(f'{key}={split!r}: {error}')
      continue
    except FileNotFoundError as error:  # a TFDS dataset without that split
      problems.append(f'{key}={split!r}: {error}')
      continue
    problems += split_index.split_problems(
        index, records_dir=folder, split=split, split_key=key,
        num_processes=num_processes if reader != EVAL_READER else 1,
        clips=clips if reader == VCLR_READER else None)
  return problems


def raise_if_any_host_has(problems: Sequence[str]) -> None:
  """Raises ConfigError listing ``problems``. With several processes every host first learns
  whether another one found problems (its data or files may differ: a split copied on one
  host only), so that all of them stop here with the same exit status instead of the others
  waiting for it in the first collective."""
  others = []
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    counts = np.asarray(multihost_utils.process_allgather(np.int32(len(problems))))
    others = [str(host) for host in np.flatnonzero(counts) if host != jax.process_index()]
  if problems:
    raise ConfigError(problems)
  if others:
    raise UserError(f'Another host (process {", ".join(others)}) found problems in the config '
                    'or its data; its output lists them.\nFix what that host lists and rerun.')


def validate_config(config: ml_collections.ConfigDict, num_devices: int,
                    num_processes: int) -> None:
  """Raises ConfigError listing every problem of a pretraining config; writes nothing."""
  problems = _choice_problems(config) + _size_problems(config)
  problems += clip_config_problems(config) + _profile_problems(config) + _vit_problems(config)
  problems += _layout_problems(config, num_devices, num_processes) + _path_problems(config)
  clips = (config.data.clip_length, config.data.clip_stride)
  if all(isinstance(value, int) and value >= 1 for value in clips):
    problems += data_problems(config.data, [('config.data.split', config.data.split,
                                             VCLR_READER)], num_processes, clips)
  raise_if_any_host_has(problems)


def _eval_splits(config, protocol: str) -> list[tuple[str, str, str]]:
  data = config.data
  if protocol == 'snippet_features':
    return [('config.snippets.splits', split, EVAL_READER)
            for split in config.snippets.splits.split(',')]
  train_reader = TSN_READER if protocol == 'finetune' else EVAL_READER
  return [('config.data.train_split', data.train_split, train_reader),
          ('config.data.test_split', data.test_split, EVAL_READER)]


def _eval_run_problems(config, protocol: str, workdir: str) -> list[str]:
  """The pretraining run the protocol reads: its config.json and, unless it starts from
  random weights, the checkpoint it names."""
  path = epath.Path(workdir) / checkpointing.CONFIG_FILE
  if not path.exists():
    return [f'--workdir={workdir} is not a vclr_jax run directory (no {path}): pass the '
            'folder python -m vclr_jax.main trained in.']
  step = None if config.checkpoint_step < 0 else config.checkpoint_step
  if protocol == 'finetune':
    source = workdir if config.init == 'pretrained' else None
  elif config.random_init:
    source = None
  elif config.finetuned_backbone:
    source = str(epath.Path(workdir) / 'finetune' / config.finetuned_backbone)
  else:
    source = workdir
  if source is None:
    return []
  try:
    checkpointing.encoder_checkpoint_path(source, step)
  except FileNotFoundError as error:  # NoCheckpointError too
    lines = str(error).splitlines()
    hint = ('' if protocol == 'finetune' else
            ', or pass --config.random_init=True for the untrained baseline')
    return [f'{lines[0]} Pretrain it first (python -m vclr_jax.main){hint}.']
  return []


def validate_eval_config(config: ml_collections.ConfigDict, protocol: str, workdir: str,
                         num_devices: int, num_processes: int) -> None:
  """Raises ConfigError listing every problem of an evaluation or fine-tuning config (the
  run it reads, batch sizes over devices and hosts, the records and their splits); writes
  nothing."""
  problems = []
  if protocol == 'finetune':
    for key in ('batch_size', 'test_batch_size'):
      if config[key] <= 0 or config[key] % num_devices:
        multiple = num_devices * max(1, config[key] // num_devices)
        problems.append(f'config.{key}={config[key]} must be a positive multiple of the '
                        f'{num_devices} devices: e.g. {multiple}.')
  elif protocol != 'snippet_features' and (
      config.data.batch_size <= 0 or config.data.batch_size % num_processes):
    problems.append(f'config.data.batch_size={config.data.batch_size} must be a positive '
                    f'multiple of the {num_processes} hosts.')
  problems += data_problems(config.data, _eval_splits(config, protocol), num_processes)
  problems += _eval_run_problems(config, protocol, workdir)
  raise_if_any_host_has(problems)
