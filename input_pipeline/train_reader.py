"""The VCLR pretraining reader: endless per-host NumPy batches, layout of vclr_jax/batch.py."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import record_stream
from input_pipeline import records
from input_pipeline import vclr_sampling

# Frames decoded per example: the query tuple (positions 0-2), then the key tuple (3-5).
NUM_DECODED = 2 * vclr_sampling.NUM_SEGMENTS


def make_vclr_example(serialized, example_seed, image_size: int, config: augment.AugmentConfig):
  """One record -> the per-example fields of the batch layout (no batch dimension)."""
  video = records.parse_video(serialized)
  sampling_seed, augment_seed = tf.unstack(
      tf.random.experimental.stateless_split(example_seed, 2))
  picked = vclr_sampling.sample_vclr_indices(tf.shape(video['frames'])[0], sampling_seed)
  # Gather the six JPEGs first: only these are decoded, whatever the video's length.
  images = augment.decode_frames(
      tf.gather(video['frames'], tf.concat([picked['query_indices'], picked['key_indices']], 0)))
  # Seven crops: the six frames, then x1 = the anchor's query frame augmented a second time.
  sources = tf.concat([tf.range(NUM_DECODED), picked['anchor'][None]], 0)
  crop_seeds = tf.random.experimental.stateless_split(augment_seed, NUM_DECODED + 1)
  crops = augment.moco_v2_augment(images, sources, crop_seeds, image_size, config)
  return {
      'query_frames': crops[:3],
      'key_frames': crops[3:6],
      'x1': crops[6],
      'anchor': picked['anchor'],
      'query_perm': picked['query_perm'],
      'key_perm': picked['key_perm'],
      'order_label': picked['order_label'],
  }


def make_train_iterator(records_dir: str, split: str, *, batch_size: int, image_size: int,
                        seed: int, start_step: int = 0, process_index: int | None = None,
                        process_count: int | None = None,
                        num_parallel_calls: int = tf.data.AUTOTUNE,
                        cycle_length: int = record_stream.StreamOptions.cycle_length,
                        shuffle_buffer: int = record_stream.StreamOptions.shuffle_buffer,
                        prefetch: int = 2,
                        augment_config: augment.AugmentConfig = augment.AugmentConfig()
                        ) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-host VCLR batches (vclr_jax/batch.py layout) of ``batch_size`` examples.

  Args:
    records_dir, split: prepared records (``records_dir/split/index.json``).
    batch_size: examples per batch on this host.
    image_size: crop size in pixels (square).
    seed: fixes the whole sequence of batches.
    start_step: the first batch yielded is batch ``start_step`` of the run that started at 0
      (resuming); the order stays the same only with the same batch_size, process layout,
      cycle_length and shuffle_buffer.
    process_index, process_count: this host and the number of hosts (default: jax's);
      host i reads shards i, i + count, ...
    num_parallel_calls: threads for decoding and augmentation (tf.data.AUTOTUNE: all cores).
    cycle_length: shards read (and interleaved) at once.
    shuffle_buffer: records in the shuffle buffer (memory: see StreamOptions).
    prefetch: batches prepared ahead.
    augment_config: the MoCo v2 augmentation parameters.
  """
  if image_size <= 0:
    raise ValueError(f'image_size={image_size} must be positive.')
  return record_stream.batched_examples(
      records_dir, split,
      lambda serialized, seed: make_vclr_example(serialized, seed, image_size, augment_config),
      batch_size=batch_size, seed=seed, start_step=start_step, process_index=process_index,
      process_count=process_count, num_parallel_calls=num_parallel_calls,
      options=record_stream.StreamOptions(cycle_length, shuffle_buffer), prefetch=prefetch)
