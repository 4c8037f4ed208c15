"""Snippet reader: every video of a split once, the centre frame of each stride-long snippet.

Used by ``python -m vclr_jax.evaluate --eval=snippet_features`` (features for temporal action
localization). Videos have different lengths, so they come one at a time, unbatched. Each host
reads its own shards (record_stream.host_shards) and needs nothing from the others.
"""

from __future__ import annotations

import os
from typing import Iterator

import tensorflow as tf

from input_pipeline import frame_decoding
from input_pipeline import record_stream
from input_pipeline import records


def snippet_frame_indices(num_frames, stride: int):
  """0-based index of the centre frame of each snippet [i * stride, (i + 1) * stride) of the
  video; the last snippet may be short, its index is clipped to the last frame."""
  starts = tf.range(0, num_frames, stride)
  return tf.minimum(starts + stride // 2, num_frames - 1)


def parse_snippets(serialized, record_format: str, stride: int, crop_size: int,
                   resize_short_side: int | None):
  video = records.parse_video(serialized, record_format)
  indices = snippet_frame_indices(tf.shape(video['frames'])[0], stride)
  images = frame_decoding.decode_frames(tf.gather(video['frames'], indices))
  return {
      'frames': frame_decoding.center_crop(images, crop_size, resize_short_side),
      'frame_indices': indices,
      'num_frames': tf.shape(video['frames'])[0],
      **{name: video[name] for name in ('label', 'video_index', 'filename', 'fps')},
  }


def video_id(filename: str) -> str:
  """The name a video's feature file gets: its source file's name without the extension (a
  frame folder's name), as ActivityNet's and mmaction2's annotation files name videos."""
  return os.path.splitext(os.path.basename(os.path.normpath(filename)))[0]


def make_snippet_iterator(records_dir: str, split: str, *, stride: int, crop_size: int,
                          resize_short_side: int | None = None,
                          process_index: int | None = None, process_count: int | None = None
                          ) -> Iterator[dict]:
  """This host's videos in shard order: 'frames' (T, crop, crop, 3) uint8 with T =
  ceil(num_frames / stride), 'frame_indices' (T,), 'num_frames', 'label', 'video_index',
  'video_id' (str), 'fps'."""
  if stride < 1:
    raise ValueError(f'config.snippets.stride must be at least 1, got {stride}.')
  record_format = records.read_index(records_dir, split)['record_format']
  shards, _, _ = record_stream.host_shards(records_dir, split, process_index, process_count)
  dataset = (tf.data.TFRecordDataset(tf.constant([shard['path'] for shard in shards], tf.string))
             .map(lambda serialized: parse_snippets(serialized, record_format, stride, crop_size,
                                                    resize_short_side),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
             .prefetch(2))
  for video in dataset.as_numpy_iterator():
    filename = video.pop('filename').decode()
    yield dict(video, video_id=video_id(filename), num_frames=int(video['num_frames']),
               fps=float(video['fps']))
