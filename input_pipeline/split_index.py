"""What a prepared split's files tell before anything is read: no TensorFlow, no JAX.

A split's ``index.json`` (written by ``python -m input_pipeline.prepare``) names its split,
its shards and their video counts; the frame index beside each shard
(``shard-*.frames.npz``, input_pipeline/frame_index.py) holds every video's frame count.
``split_problems`` reads both with etils.epath and NumPy and says, one line each, what would
stop a reader later: a missing or empty split, the index of another split, fewer shards than
hosts, a missing frame index, videos too short for the clips. The entry points run it in
their config checks (vclr_jax/config_checks.py), before a run writes anything; the readers
raise the same errors when they meet the same files.
"""

from __future__ import annotations

import json

import numpy as np
from etils import epath

from vclr_jax import batch as batch_layout
from vclr_jax import cli_errors

INDEX_FILENAME = 'index.json'
FRAME_INDEX_SUFFIX = '.frames.npz'
# A built TFDS dataset's version folder holds this file; its index is TFDS's metadata.
TFDS_INFO_FILENAME = 'dataset_info.json'


class SplitMismatchError(cli_errors.UserError, ValueError):
  """A split folder that holds the records of another split (copied or renamed)."""


class VideosTooShortError(cli_errors.UserError, ValueError):
  """Videos with fewer frames than VCLR's sampling of the configured clips takes."""


def too_short_message(clip_length: int = 1, clip_stride: int = 1) -> str:
  """What a too-short video's error says, with the fix."""
  needed = batch_layout.min_video_frames(clip_length, clip_stride)
  clips = (f'clips of {clip_length} frames at stride {clip_stride} '
           f'(config.data.clip_length, config.data.clip_stride)' if clip_length > 1 else
           'single frames')
  return (f'VCLR with {clips} needs videos of at least {needed} frames (two non-overlapping '
          f'clips in each of 3 segments); prepare the records with --min_frames={needed}, or '
          'shorten the clips.')


def split_mismatch_message(index_path: str, found: str, split: str) -> str:
  folder = str(epath.Path(index_path).parent)
  return (f'{index_path} is the index of split {found!r}, but split {split!r} was asked for: '
          f'the folder {folder} holds records of another split (copied or renamed?). Point the '
          'reader at the right folder, or prepare the split again.')


def frame_index_path(shard_path: str) -> str:
  # Prepared shards end in '.tfrecord' (the index replaces it); TFDS's files in
  # '.tfrecord-00000-of-00008' (input_pipeline/vclr_videos: the index is added).
  return shard_path.removesuffix('.tfrecord') + FRAME_INDEX_SUFFIX


def is_tfds_dataset(records_dir: str) -> bool:
  return (epath.Path(records_dir) / TFDS_INFO_FILENAME).exists()


def read_split_index(records_dir: str, split: str) -> dict | None:
  """The prepared split's index.json with absolute shard paths, or None if there is none.
  Raises SplitMismatchError for the index of another split."""
  path = epath.Path(records_dir) / split / INDEX_FILENAME
  if not path.exists():
    return None
  index = json.loads(path.read_text())
  if index['split'] != split:
    raise SplitMismatchError(split_mismatch_message(str(path), index['split'], split))
  for shard in index['shards']:
    shard['path'] = str(epath.Path(records_dir) / split / shard['path'])
  return index


def frames_per_video(shard_path: str) -> np.ndarray:
  """The frame count of every video of a shard, from its frame index (only that array is
  read). FileNotFoundError naming the file and the fix if the index is missing."""
  path = epath.Path(frame_index_path(shard_path))
  if not path.exists():
    raise FileNotFoundError(
        f'{path} is missing: the training reader reads single frames through it. Create it '
        'with `python -m input_pipeline.frame_index --records=DIR` (records prepared before the '
        'frame index existed), or prepare the records again.')
  with path.open('rb') as f:
    return np.load(f)['frames_per_record']


def _prepared_splits(records_dir: str) -> list[str]:
  root = epath.Path(records_dir)
  if not root.is_dir():
    return []
  return sorted(child.name for child in root.iterdir() if (child / INDEX_FILENAME).exists())


def split_problems(index: dict | None, *, records_dir: str, split: str, split_key: str,
                   num_processes: int, clips: tuple[int, int] | None = None) -> list[str]:
  """What stops a reader of ``split``, one line each ([] if nothing).

  Args:
    index: read_split_index's (None: no index.json), or a TFDS dataset's (records.read_index).
    split_key: the config key naming the split, for the messages (e.g. 'config.data.split').
    num_processes: hosts; each reads its own shards, so every host needs one.
    clips: (clip_length, clip_stride) for the training reader, which needs every video to
      hold batch.min_video_frames of them and reads the frame index; None for the readers of
      whole records (evaluation, fine-tuning), which take any length.
  """
  where = f'{records_dir}/{split}'
  if index is None:
    return [f'{split_key}={split!r}: {where}/{INDEX_FILENAME} does not exist (prepared splits in '
            f'{records_dir}: {_prepared_splits(records_dir) or "none"}); prepare it with '
            f'`python -m input_pipeline.prepare --out={records_dir} --splits={split}` or fix '
            f'{split_key}.']
  shards = index['shards']
  if not index['num_videos'] or not shards:
    return [f'{split_key}={split!r}: {where} holds no videos; prepare it again (its '
            f'{split}/skipped.tsv says why every input was skipped).']
  if len(shards) < num_processes:
    return [f'{where} has {len(shards)} shards for {num_processes} hosts, and each host reads '
            'its own shards: prepare it again with `--num_shards` a multiple of the host '
            'count, or run on fewer hosts.']
  if clips is None:
    return []
  problems, short, total = [], 0, 0
  needed = batch_layout.min_video_frames(*clips)
  for shard in shards:
    try:
      counts = frames_per_video(shard['path'])
    except FileNotFoundError as error:
      missing = sum(not epath.Path(frame_index_path(s['path'])).exists() for s in shards)
      return [f'{missing} of the {len(shards)} shards of {where} have no frame index, e.g. '
              + str(error)]
    short += int(np.sum(counts < needed))
    total += len(counts)
  if short:
    problems.append(f'{short} of the {total} videos of {where} are too short: '
                    + too_short_message(*clips))
  return problems
