r"""Prepares videos into sharded tf.train.SequenceExample records (see docs/data.md).

  python -m input_pipeline.prepare --source=ucf101 --root=UCF-101 \
      --splits_dir=ucfTrainTestlist --splits=train,test --out=records/ucf101 --short_side=256

Shards are written in parallel worker processes; a shard counts as finished once its summary
``shard-*.json`` exists and the shard file still has the byte size and record count the summary
recorded, so rerunning the same command after an interruption writes only the missing shards
and the damaged ones (truncated, or cut off by garbage). Inputs that cannot be used are skipped
and listed in ``<split>/skipped.tsv``. Every path goes through ``tf.io.gfile``: ``--out`` may be
``gs://...`` (or any filesystem TensorFlow accepts).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf
import tqdm

from input_pipeline import frame_index
from input_pipeline import records
from input_pipeline import sources
from input_pipeline import video_decoding

# Enough for the VCLR sampler: 3 segments of at least 2 distinct frames each.
DEFAULT_MIN_FRAMES = 6
SETTINGS_FILENAME = 'prepare_settings.json'


@dataclasses.dataclass(frozen=True)
class EncodingOptions:
  fps: float | None
  geometry: video_decoding.FrameGeometry
  jpeg_quality: int
  min_frames: int
  frames_fps: float  # Frame rate of the 'frames' source's JPEG folders.
  frames_per_video: int | None = None  # Pad or trim every video to this many (fit_frame_count).


@dataclasses.dataclass(frozen=True)
class ShardTask:
  split_dir: str
  shard: int
  num_shards: int
  entries: list[tuple[int, sources.VideoEntry]]  # (video index in the split, entry)
  options: EncodingOptions

  @property
  def record_path(self) -> str:
    return os.path.join(self.split_dir, records.shard_filename(self.shard, self.num_shards))

  @property
  def summary_path(self) -> str:
    return self.record_path[:-len('.tfrecord')] + '.json'


def fit_frame_count(frames: list, count: int) -> list:
  """The frames of a video padded or trimmed to ``count``, by the reference's K400 rule.

  The authors' extractor (tools/data/k400/extract_frames.py of amazon-science/
  video-contrastive-learning) keeps the first ``count`` frames of a longer video. For a shorter
  one of n frames it copies frame n - 1 (1-based file names) over frame n and onwards up to
  ``count``: the result is frames 1 .. n - 1 followed by frame n - 1 repeated, so the true last
  frame is lost. We do the same, so that records match the reference's frame folders frame for
  frame (and segment boundaries, which depend only on the count, match too). Needs n >= 2.
  """
  if len(frames) >= count:
    return frames[:count]
  if len(frames) < 2:
    raise ValueError(f'the reference padding rule needs at least 2 frames, got {len(frames)}')
  return frames[:len(frames) - 1] + [frames[len(frames) - 2]] * (count - len(frames) + 1)


def decode_entry(entry: sources.VideoEntry, options: EncodingOptions
                 ) -> video_decoding.DecodedVideo:
  if entry.is_frame_folder:
    video = video_decoding.decode_frame_folder(
        entry.path, fps=options.fps, source_fps=options.frames_fps, geometry=options.geometry,
        jpeg_quality=options.jpeg_quality)
  else:
    video = video_decoding.decode_video_file(
        entry.path, fps=options.fps, geometry=options.geometry,
        jpeg_quality=options.jpeg_quality)
  if len(video.jpeg_frames) < options.min_frames:
    raise video_decoding.VideoError(
        f'too short: {len(video.jpeg_frames)} frames, need --min_frames={options.min_frames}')
  if options.frames_per_video:
    video = dataclasses.replace(
        video, jpeg_frames=fit_frame_count(video.jpeg_frames, options.frames_per_video))
  return video


def _encode_video(indexed_entry: tuple[int, sources.VideoEntry], options: EncodingOptions
                  ) -> tuple[sources.VideoEntry, dict | None, str]:
  video_index, entry = indexed_entry
  try:
    video = decode_entry(entry, options)
  except video_decoding.VideoError as error:
    return entry, None, str(error)
  except Exception as error:  # pylint: disable=broad-except
    # One odd file (a decoder bug, a corrupt header PyAV trips over) must not end a
    # job of hours: record it like any other unusable input.
    return entry, None, f'unexpected error: {type(error).__name__}: {error}'
  fields = dict(jpeg_frames=video.jpeg_frames, label_index=entry.label_index,
                label_string=entry.label_string, filename=entry.name, video_index=video_index,
                fps=video.fps, height=video.height, width=video.width)
  return entry, fields, ''


def encode_videos(indexed_entries: Iterable[tuple[int, sources.VideoEntry]],
                  options: EncodingOptions, pool=None
                  ) -> Iterator[tuple[sources.VideoEntry, dict | None, str]]:
  """Decodes each (video index in the split, entry), in order, into its record's fields.

  Yields (entry, fields, '') for a usable video, where ``fields`` are the arguments of
  records.serialize_video, and (entry, None, why it is skipped) for any other: bad inputs are
  reported, never raised. With ``pool`` (see ``worker_pool``) the videos are decoded in its
  processes. Preparation and the TFDS builder (input_pipeline/vclr_videos) both encode
  through this function, so their examples are the same.
  """
  encode = functools.partial(_encode_video, options=options)
  return pool.imap(encode, indexed_entries) if pool else map(encode, indexed_entries)


def write_shard(task: ShardTask) -> dict:
  """Writes one shard and its summary; bad inputs are recorded, never raised."""
  num_videos = num_frames = 0
  seconds = 0.0
  skipped = []
  tmp_path = task.record_path + '.tmp'
  frames = frame_index.ShardIndexBuilder()
  with tf.io.TFRecordWriter(tmp_path) as writer:
    for entry, fields, skip_reason in encode_videos(task.entries, task.options):
      if fields is None:
        skipped.append((entry.name, skip_reason))
        continue
      serialized = records.serialize_video(**fields)
      writer.write(serialized)
      frames.add(serialized, fields['jpeg_frames'])
      num_videos += 1
      num_frames += len(fields['jpeg_frames'])
      seconds += len(fields['jpeg_frames']) / fields['fps']
  tf.io.gfile.rename(tmp_path, task.record_path, overwrite=True)
  frames.save(frame_index.index_path(task.record_path))
  summary = {'path': os.path.basename(task.record_path), 'num_videos': num_videos,
             'num_frames': num_frames, 'num_bytes': frames.num_bytes, 'seconds': seconds,
             'skipped': skipped}
  records.write_json_atomically(task.summary_path, summary)
  return summary


def _check_settings(split_dir: str, settings: dict) -> None:
  """Refuses to mix shards written with different settings into one split."""
  path = os.path.join(split_dir, SETTINGS_FILENAME)
  settings = json.loads(json.dumps(settings))  # Tuples become lists, as in the saved file.
  if tf.io.gfile.exists(path):
    previous = records.read_json(path)
    if previous != settings:
      changed = sorted(k for k in set(previous) | set(settings)
                       if previous.get(k) != settings.get(k))
      raise SystemExit(
          f'{split_dir} was prepared with different settings ({", ".join(changed)} differ; see '
          f'{path}). Rerun with the same flags to resume, or pass a new --out.')
  records.write_json_atomically(path, settings)


def prepare_split(listing: sources.Listing, *, out_dir: str, split: str,
                  options: EncodingOptions, videos_per_shard: int, num_shards: int | None,
                  seed: int, source_description: dict, pool=None,
                  show_progress: bool = True) -> dict:
  """Writes (or completes) one split and its index; returns the index.

  Shards are written by ``pool`` (a multiprocessing pool, see ``worker_pool``) or, without
  one, in this process.
  """
  split_dir = records.split_dir(out_dir, split)
  tf.io.gfile.makedirs(split_dir)
  num_entries = len(listing.entries)
  num_shards = num_shards or max(1, -(-num_entries // videos_per_shard))
  num_shards = min(num_shards, num_entries)
  settings = {'source': source_description, 'split': split, 'num_entries': num_entries,
              'num_shards': num_shards, 'seed': seed,
              'options': dataclasses.asdict(options)}
  _check_settings(split_dir, settings)
  # Shuffled before sharding so that every shard mixes classes, and the reader's shard-level
  # shuffling is enough to mix the dataset.
  order = np.random.default_rng(seed).permutation(num_entries)
  tasks = [ShardTask(split_dir, shard, num_shards,
                     [(int(i), listing.entries[i]) for i in sorted(order[shard::num_shards])],
                     options) for shard in range(num_shards)]
  pending = [task for task in tasks if not is_finished(task)]
  done_videos = sum(len(task.entries) for task in tasks) - sum(len(t.entries) for t in pending)
  if len(pending) < len(tasks):
    print(f'{split}: {len(tasks) - len(pending)} of {len(tasks)} shards already finished (size '
          'and record count checked), skipping them.')
  with tqdm.tqdm(total=num_entries, initial=done_videos, unit='video', desc=split,
                 disable=not show_progress) as progress:
    if pool is None or len(pending) <= 1:
      for task in pending:
        write_shard(task)
        progress.update(len(task.entries))
    else:
      by_path = {os.path.basename(task.record_path): task for task in pending}
      for summary in pool.imap_unordered(write_shard, pending):
        progress.update(len(by_path[summary['path']].entries))
  return _write_index(split_dir, tasks, listing, split, settings)


def is_finished(task: ShardTask) -> bool:
  """True if the shard's summary exists and the shard file still matches it; a shard that does
  not is reported and will be written again."""
  if not tf.io.gfile.exists(task.summary_path):
    return False
  mismatch = frame_index.shard_mismatch(task.record_path, records.read_json(task.summary_path))
  if mismatch:
    print(f'{task.record_path} does not match its summary ({mismatch}): writing it again.')
  return mismatch is None


def worker_pool(workers: int):
  """A pool of ``workers`` processes for prepare_split, or None to work in this process."""
  if workers <= 1:
    return None
  # 'spawn': TensorFlow and PyAV keep threads that a forked child must not inherit.
  return multiprocessing.get_context('spawn').Pool(workers)


def _write_index(split_dir: str, tasks: list[ShardTask], listing: sources.Listing, split: str,
                 settings: dict) -> dict:
  summaries = [records.read_json(task.summary_path) for task in tasks]
  skipped = [row for summary in summaries for row in summary['skipped']]
  with tf.io.gfile.GFile(os.path.join(split_dir, records.SKIPPED_FILENAME), 'w') as f:
    f.write('video\treason\n')
    for name, reason in skipped:
      f.write(f'{name}\t{reason}\n')
  index = {
      'split': split,
      'num_videos': sum(s['num_videos'] for s in summaries),
      'num_frames': sum(s['num_frames'] for s in summaries),
      'seconds': sum(s['seconds'] for s in summaries),
      'num_listed': len(listing.entries),
      'num_skipped': len(skipped),
      'num_classes': len(listing.class_names),
      'class_names': listing.class_names,
      'shards': [{k: s[k] for k in ('path', 'num_videos', 'num_frames', 'num_bytes')}
                 for s in summaries],
      'settings': settings,
  }
  records.write_json_atomically(os.path.join(split_dir, records.INDEX_FILENAME), index)
  return index


def summarize(index: dict, split_dir: str) -> str:
  lines = [f"{index['split']}: {index['num_videos']} videos, {index['num_frames']} frames, "
           f"{index['num_classes']} classes in {len(index['shards'])} shards at {split_dir}"]
  if index['num_skipped']:
    reasons = collections.Counter()
    with tf.io.gfile.GFile(os.path.join(split_dir, records.SKIPPED_FILENAME)) as f:
      next(f)
      for line in f:
        reason = line.rstrip('\n').split('\t', 1)[1]
        reasons[reason.split(':')[0]] += 1
    lines.append(f"  skipped {index['num_skipped']} of {index['num_listed']} inputs (see "
                 f"{os.path.join(split_dir, records.SKIPPED_FILENAME)}): " +
                 ', '.join(f'{n} {reason}' for reason, n in reasons.most_common()))
  return '\n'.join(lines)


def _parse_size(text: str) -> tuple[int, int] | None:
  if not text:
    return None
  try:
    width, height = (int(part) for part in text.lower().split('x'))
  except ValueError:
    raise SystemExit(f'--resize={text!r} is not WIDTHxHEIGHT, e.g. --resize=340x256.') from None
  return width, height


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m input_pipeline.prepare', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_argument_group('source')
  source.add_argument('--source', required=True, choices=sources.SOURCE_KINDS,
                      help='kinetics: --csv + --videos_dir; ucf101 / hmdb51: --root (videos) + '
                      '--splits_dir; frames: reference JPEG folders with <split>.txt in --root; '
                      'folder: unlabelled videos under --root; list: classes.txt + <split>.txt '
                      'in --root (the synthetic dataset).')
  source.add_argument('--splits', default='train',
                      help='comma-separated splits to prepare (default: train). For kinetics '
                      "the CSV's split column, for ucf101/hmdb51 train,test, for frames/list "
                      'the <split>.txt names, for folder just the output name.')
  source.add_argument('--root', default='', help='dataset folder (all kinds but kinetics)')
  source.add_argument('--csv', default='', help='kinetics: annotation CSV')
  source.add_argument('--videos_dir', default='', help='kinetics: folder of the videos')
  source.add_argument('--splits_dir', default='', help='ucf101 / hmdb51: split list folder')
  source.add_argument('--split_number', type=int, default=1, help='ucf101 / hmdb51: 1, 2 or 3')
  source.add_argument('--frames_fps', type=float, default=30.0,
                      help='frames: frame rate of the JPEG folders (reference: 30)')
  output = parser.add_argument_group('output')
  output.add_argument('--out', required=True, help='records folder; one subfolder per split')
  output.add_argument('--fps', type=float, default=0.0,
                      help='resample to this frame rate (0: keep every source frame)')
  output.add_argument('--short_side', type=int, default=0,
                      help='resize so the short side has this many pixels (0: keep)')
  output.add_argument('--resize', default='',
                      help='resize to a fixed WIDTHxHEIGHT instead, e.g. 340x256 (reference)')
  output.add_argument('--jpeg_quality', type=int, default=90)
  output.add_argument('--min_frames', type=int, default=DEFAULT_MIN_FRAMES,
                      help='videos with fewer frames after resampling are skipped')
  output.add_argument('--frames_per_video', type=int, default=0,
                      help='pad or trim every video to this many frames by the reference '
                      "extractor's rule (K400: 300 with --fps=30 --resize=340x256; 0: keep all)")
  output.add_argument('--videos_per_shard', type=int, default=128)
  output.add_argument('--num_shards', type=int, default=0,
                      help='shards per split (0: from --videos_per_shard)')
  output.add_argument('--seed', type=int, default=0, help='seed of the video-to-shard shuffle')
  output.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                      help='parallel processes (default: all cores)')
  return parser


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = build_parser().parse_args(argv)
  fixed_size = _parse_size(args.resize)
  if fixed_size and args.short_side:
    raise SystemExit('Pass either --resize or --short_side, not both.')
  if args.frames_per_video and (args.frames_per_video < 0 or args.min_frames < 2):
    raise SystemExit(f'--frames_per_video={args.frames_per_video} needs a positive count and '
                     f'--min_frames of at least 2 (got {args.min_frames}): the padding repeats '
                     'the second-to-last frame.')
  options = EncodingOptions(
      fps=args.fps or None,
      geometry=video_decoding.FrameGeometry(fixed_size, args.short_side or None),
      jpeg_quality=args.jpeg_quality, min_frames=args.min_frames, frames_fps=args.frames_fps,
      frames_per_video=args.frames_per_video or None)
  source_description = {k: getattr(args, k) for k in (
      'source', 'root', 'csv', 'videos_dir', 'splits_dir', 'split_number')}
  splits = [s for s in args.splits.split(',') if s]
  try:  # List every split first: a wrong path should fail before hours of work, not after.
    listings = [sources.list_source(
        args.source, split=split, root=args.root, csv_path=args.csv,
        videos_dir=args.videos_dir, splits_dir=args.splits_dir,
        split_number=args.split_number) for split in splits]
  except sources.SourceError as error:
    raise SystemExit(f'error: {error}') from None
  indices = []
  pool = worker_pool(args.workers)
  try:
    for split, listing in zip(splits, listings):
      index = prepare_split(
          listing, out_dir=args.out, split=split, options=options,
          videos_per_shard=args.videos_per_shard, num_shards=args.num_shards or None,
          seed=args.seed, source_description=source_description, pool=pool)
      split_dir = records.split_dir(args.out, split)
      print(summarize(index, split_dir))
      if index['num_videos'] == 0:
        raise SystemExit(f'error: every input of split {split!r} was skipped; the reasons are '
                         f'in {os.path.join(split_dir, records.SKIPPED_FILENAME)}.')
      indices.append(index)
  finally:
    if pool is not None:
      pool.terminate()  # Every task has finished unless an error or Ctrl-C got here.
      pool.join()
  return indices


if __name__ == '__main__':
  from vclr_jax import cli_errors
  cli_errors.guard(main, sys.argv[1:])
