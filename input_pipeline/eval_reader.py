"""Evaluation reader: N uniformly spaced, centre-cropped frames per video, every video once.

Used for feature extraction (linear probe, retrieval: 30 frames) and for TSN testing (25 or 8
frames). For 3D backbones every one of the N becomes a clip of ``clip_length`` frames at
``clip_stride``, the clips' first frames uniformly spaced over the starts that fit. Hosts read
disjoint shards; every host yields the same number of batches (padded with masked-out
examples) so that collective ops in the consumer stay in step. Damaged records are
masked out like padding, counted and named (input_pipeline/damage.py).
"""

from __future__ import annotations

import tensorflow as tf

from input_pipeline import damage
from input_pipeline import frame_decoding
from input_pipeline import record_stream
from input_pipeline import records
from vclr_jax import batch as batch_layout

PADDING_INDEX = -1  # label and video_index of padding and damaged examples.


def uniform_frame_indices(num_frames, count: int):
  """0-based indices of round(linspace(1, F, count)) (1-based, as the reference), int32.

  Rounding is half to even, like NumPy's.
  """
  positions = tf.linspace(tf.constant(1.0, tf.float64), tf.cast(num_frames, tf.float64), count)
  return tf.cast(tf.round(positions), tf.int32) - 1


def uniform_clip_indices(num_frames, count: int, clip_length: int, clip_stride: int):
  """(count, clip_length) 0-based frame indices of ``count`` clips: the first frames are
  uniform_frame_indices over the starts whose clip fits in the video (all of them when one
  clip does not fit: its frames past the end repeat the last frame)."""
  span = batch_layout.clip_span(clip_length, clip_stride)
  starts = uniform_frame_indices(tf.maximum(num_frames - span + 1, 1), count)
  indices = starts[:, None] + clip_stride * tf.range(clip_length)[None, :]
  return tf.minimum(indices, num_frames - 1)


def make_eval_example(serialized, record_format: str, num_frames: int, crop_size: int,
                      resize_short_side: int | None, clip_length: int = 1, clip_stride: int = 1):
  video = records.parse_video(serialized, record_format)
  indices = uniform_clip_indices(tf.shape(video['frames'])[0], num_frames, clip_length,
                                 clip_stride)
  images = frame_decoding.decode_frames(tf.gather(video['frames'], tf.reshape(indices, [-1])))
  frames = frame_decoding.center_crop(images, crop_size, resize_short_side)
  return {
      'frames': tf.reshape(frames, batch_layout.frames_shape(
          num_frames, (crop_size, crop_size), clip_length)),
      'label': video['label'],
      'video_index': video['video_index'],
      'mask': tf.constant(True),
  }


def num_eval_batches(records_dir: str, split: str, *, batch_size: int,
                     process_count: int | None = None) -> int:
  """Batches every host yields: enough for the host with the most videos."""
  _, process_count = record_stream.resolve_process(None, process_count)
  shards = records.read_index(records_dir, split)['shards']
  most = max(sum(s['num_videos'] for s in shards[i::process_count])
             for i in range(process_count))
  return -(-most // batch_size)


def make_eval_iterator(records_dir: str, split: str, *, batch_size: int, num_frames: int = 30,
                       crop_size: int = 224, resize_short_side: int | None = None,
                       clip_length: int = 1, clip_stride: int = 1,
                       process_index: int | None = None, process_count: int | None = None,
                       num_parallel_calls: int = tf.data.AUTOTUNE,
                       max_skipped_fraction: float = damage.DEFAULT_MAX_SKIPPED_FRACTION
                       ) -> damage.SkippingBatches:
  """One pass over the split in fixed-size batches, in shard order.

  Yields ``num_eval_batches(...)`` dicts: 'frames' (b, num_frames, crop, crop, 3) uint8, or
  (b, num_frames, clip_length, crop, crop, 3) for clips of clip_length > 1 frames
  (normalised on the device: vclr_jax.augment.normalize_uint8), 'label' (b,) int32 (-1 for unlabelled data and padding),
  'video_index' (b,) int32 (the video's position in the split's list; -1 for padding),
  'mask' (b,) bool (False for padding and damaged videos). Across hosts every undamaged video
  appears exactly once; the iterator's ``skipped_examples`` counts the damaged ones.
  """
  index = records.read_index(records_dir, split)
  shards, process_index, process_count = record_stream.host_shards(
      records_dir, split, process_index, process_count)
  num_batches = num_eval_batches(records_dir, split, batch_size=batch_size,
                                 process_count=process_count)
  host_videos = sum(shard['num_videos'] for shard in shards)

  def placeholder():  # padding, and what a damaged video becomes (damage.SkippingBatches)
    return {
        'frames': tf.zeros(batch_layout.frames_shape(num_frames, (crop_size, crop_size),
                                                     clip_length), tf.uint8),
        'label': tf.constant(PADDING_INDEX),
        'video_index': tf.constant(PADDING_INDEX),
        'mask': tf.constant(False),
    }

  padding = dict(placeholder(), status=tf.constant(damage.OK), shard=tf.constant(0),
                 record=tf.constant(0))
  records_of = record_stream.shard_records(shards)
  videos = record_stream.skip_damaged(
      tf.data.Dataset.range(len(shards)).flat_map(records_of),
      lambda element: make_eval_example(element['serialized'], index['record_format'],
                                        num_frames, crop_size, resize_short_side, clip_length,
                                        clip_stride),
      placeholder, num_parallel_calls)
  batches = (videos
             .concatenate(tf.data.Dataset.from_tensors(padding).repeat(
                 num_batches * batch_size - host_videos))
             .batch(batch_size, drop_remainder=True)
             .prefetch(2)
             .as_numpy_iterator())
  return damage.SkippingBatches(
      batches, [shard['path'] for shard in shards],
      split_videos=index['num_videos'],
      max_skipped_fraction=max_skipped_fraction, fill=False)
