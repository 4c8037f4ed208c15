"""TSN fine-tuning reader (training side): k segments, one random frame (or clip) each, labels.

As mmaction2's TSN recipe used by the paper: the video is cut into ``num_segments`` equal
segments, one frame is drawn uniformly in each. The frames ship as uint8 on the
``frame_size`` canvas; the fine-tuning step cuts a MoCo-style random resized crop with a
horizontal flip (no colour augmentation) from each on the device, with the pretraining
step's code (vclr_jax/augment.py). Testing uses
``eval_reader.make_eval_iterator`` with num_frames=25 (UCF101) or 8 (HMDB51). For a 3D
backbone each segment gives a clip of ``clip_length`` frames at ``clip_stride`` instead, its
first frame drawn uniformly among those whose clip fits in the segment.
The stream is the same deterministic, resumable, per-host stream as pretraining.
"""

from __future__ import annotations

import tensorflow as tf

from input_pipeline import damage
from input_pipeline import frame_decoding
from input_pipeline import record_stream
from input_pipeline import records
from vclr_jax import batch as batch_layout


def sample_segment_frames(num_frames, num_segments: int, seed, clip_length: int = 1,
                          clip_stride: int = 1):
  """One uniformly random clip in each of ``num_segments`` equal segments: int32 (k, L)
  frame indices, (k,) for single frames (clip_length 1).

  Segment i spans [floor(i F / k), floor((i + 1) F / k)); its clip starts uniformly among the
  frames whose clip ends inside the segment. A segment too short for one clip (or a video
  with fewer frames than segments) uses its start frame, and frames past the video's end
  repeat the last one.
  """
  span = batch_layout.clip_span(clip_length, clip_stride)
  bounds = tf.floor(tf.linspace(0.0, tf.cast(num_frames, tf.float32), num_segments + 1))
  starts = tf.maximum(bounds[1:] - bounds[:-1] - (span - 1), 1.0)
  offsets = tf.floor(tf.random.stateless_uniform([num_segments], seed=seed) * starts)
  first = tf.cast(bounds[:-1] + offsets, tf.int32)
  indices = tf.minimum(first[:, None] + clip_stride * tf.range(clip_length)[None, :],
                       tf.cast(num_frames, tf.int32) - 1)
  return indices if clip_length > 1 else indices[:, 0]


def make_tsn_example(serialized, record_format: str, example_seed, num_segments: int,
                     frame_size: tuple[int, int], clip_length: int = 1, clip_stride: int = 1):
  video = records.parse_video(serialized, record_format)
  indices = sample_segment_frames(tf.shape(video['frames'])[0], num_segments, example_seed,
                                  clip_length, clip_stride)
  jpegs = tf.gather(video['frames'], tf.reshape(indices, [-1]))
  frames = frame_decoding.decode_onto_canvas(jpegs, num_segments * clip_length, frame_size)
  return {'frames': tf.reshape(frames, batch_layout.frames_shape(num_segments, frame_size,
                                                                clip_length)),
          'label': video['label'], 'video_index': video['video_index']}


def make_tsn_train_iterator(records_dir: str, split: str, *, batch_size: int,
                            frame_size: tuple[int, int], num_segments: int, seed: int,
                            clip_length: int = 1, clip_stride: int = 1, start_step: int = 0,
                            process_index: int | None = None, process_count: int | None = None,
                            options: record_stream.ReaderOptions = record_stream.ReaderOptions()
                            ) -> damage.SkippingBatches:
  """Endless per-host batches: 'frames' (b, num_segments, H, W, 3) uint8 on the frame_size
  canvas ((b, num_segments, clip_length, H, W, 3) for clips), 'label' (b,) int32,
  'video_index' (b,) int32. Arguments as
  train_reader.make_train_iterator; damaged records are skipped as there (damage.py).
  """
  frame_size = tuple(frame_size)
  record_format = records.read_index(records_dir, split)['record_format']
  return record_stream.batched_examples(
      records_dir, split,
      read=lambda element, example_seed: dict(element, example_seed=example_seed),
      make=lambda element: make_tsn_example(element['serialized'], record_format,
                                            element['example_seed'], num_segments, frame_size,
                                            clip_length, clip_stride),
      placeholder=lambda: {'frames': tf.zeros(batch_layout.frames_shape(
          num_segments, frame_size, clip_length), tf.uint8),
                           'label': tf.constant(0), 'video_index': tf.constant(0)},
      batch_size=batch_size, seed=seed, start_step=start_step, process_index=process_index,
      process_count=process_count, options=options)
