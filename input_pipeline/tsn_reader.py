"""TSN fine-tuning reader (training side): k segments, one random frame each, labels.

As mmaction2's TSN recipe used by the paper: the video is cut into ``num_segments`` equal
segments, one frame is drawn uniformly in each, and every frame gets a MoCo-style random
resized crop and a horizontal flip (no colour augmentation). Testing uses
``eval_reader.make_eval_iterator`` with num_frames=25 (UCF101) or 8 (HMDB51).
The stream is the same deterministic, resumable, per-host stream as pretraining.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import record_stream
from input_pipeline import records


def sample_segment_frames(num_frames, num_segments: int, seed):
  """One uniformly random frame in each of ``num_segments`` equal segments, int32 (k,).

  Segment i spans [floor(i F / k), floor((i + 1) F / k)); a video with fewer frames than
  segments repeats frames (an empty segment uses its start frame).
  """
  num_frames = tf.cast(num_frames, tf.float32)
  bounds = tf.floor(tf.linspace(0.0, num_frames, num_segments + 1))
  lengths = tf.maximum(bounds[1:] - bounds[:-1], 1.0)
  offsets = tf.floor(tf.random.stateless_uniform([num_segments], seed=seed) * lengths)
  return tf.cast(tf.minimum(bounds[:-1] + offsets, num_frames - 1), tf.int32)


def make_tsn_example(serialized, example_seed, num_segments: int, image_size: int,
                     crop_config: augment.AugmentConfig):
  video = records.parse_video(serialized)
  sampling_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
  indices = sample_segment_frames(tf.shape(video['frames'])[0], num_segments, sampling_seed)
  images = augment.decode_frames(tf.gather(video['frames'], indices))
  crops = augment.random_resized_crops(
      images, tf.range(num_segments), tf.random.experimental.stateless_split(crop_seed,
                                                                             num_segments),
      image_size, crop_config)
  return {'frames': augment.normalize(crops), 'label': video['label'],
          'video_index': video['video_index']}


def make_tsn_train_iterator(records_dir: str, split: str, *, batch_size: int, image_size: int,
                            num_segments: int, seed: int, start_step: int = 0,
                            process_index: int | None = None, process_count: int | None = None,
                            num_parallel_calls: int = tf.data.AUTOTUNE,
                            cycle_length: int = record_stream.StreamOptions.cycle_length,
                            shuffle_buffer: int = record_stream.StreamOptions.shuffle_buffer,
                            crop_config: augment.AugmentConfig = augment.AugmentConfig()
                            ) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-host batches: 'frames' (b, num_segments, S, S, 3) float32 normalised,
  'label' (b,) int32, 'video_index' (b,) int32. Arguments as train_reader.make_train_iterator;
  only crop_scale, crop_ratio and flip_probability of ``crop_config`` are used.
  """
  return record_stream.batched_examples(
      records_dir, split,
      lambda serialized, example_seed: make_tsn_example(
          serialized, example_seed, num_segments, image_size, crop_config),
      batch_size=batch_size, seed=seed, start_step=start_step, process_index=process_index,
      process_count=process_count, num_parallel_calls=num_parallel_calls,
      options=record_stream.StreamOptions(cycle_length, shuffle_buffer))
