"""The VCLR pretraining reader: endless per-host uint8 batches, layout of vclr_jax/batch.py.

The host reads, samples and decodes; nothing else. Per example it parses the record, draws
VCLR's six frame indices, decodes only those six JPEGs onto the ``frame_size`` canvas and
ships them as uint8 with the sampling labels. Crops, flips and colour augmentation run on
the accelerator inside the train step (vclr_jax/augment.py).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from input_pipeline import record_stream
from input_pipeline import records
from input_pipeline import frame_decoding
from input_pipeline import vclr_sampling
from vclr_jax import batch as batch_layout


def make_vclr_example(serialized, example_seed, frame_size: tuple[int, int]):
  """One record -> the per-example fields of the batch layout (no batch dimension)."""
  video = records.parse_video(serialized)
  picked = vclr_sampling.sample_vclr_indices(tf.shape(video['frames'])[0], example_seed)
  # Gather the six JPEGs first: only these are decoded, whatever the video's length.
  jpegs = tf.gather(video['frames'], tf.concat([picked['query_indices'], picked['key_indices']],
                                               0))
  return {
      'frames': frame_decoding.decode_onto_canvas(jpegs, batch_layout.NUM_FRAMES, frame_size),
      'anchor': picked['anchor'],
      'query_perm': picked['query_perm'],
      'key_perm': picked['key_perm'],
      'order_label': picked['order_label'],
  }


def make_train_iterator(records_dir: str, split: str, *, batch_size: int,
                        frame_size: tuple[int, int], seed: int, start_step: int = 0,
                        process_index: int | None = None, process_count: int | None = None,
                        options: record_stream.ReaderOptions = record_stream.ReaderOptions()
                        ) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-host VCLR batches (vclr_jax/batch.py layout) of ``batch_size`` examples.

  Args:
    records_dir, split: prepared records (``records_dir/split/index.json``).
    batch_size: examples per batch on this host.
    frame_size: (height, width) of the uint8 canvas; frames of another size are resized
      (bilinear, antialiased) on the host.
    seed: fixes the whole sequence of batches.
    start_step: the first batch yielded is batch ``start_step`` of the run that started at 0
      (resuming); the order stays the same only with the same batch_size, process layout and
      ``options.cycle_length`` / ``options.shuffle_buffer``.
    process_index, process_count: this host and the number of hosts (default: jax's);
      host i reads shards i, i + count, ...
    options: thread counts, interleaving, shuffling and prefetch (config.data).
  """
  if batch_size <= 0 or min(frame_size) <= 0:
    raise ValueError(f'batch_size={batch_size} and frame_size={frame_size} must be positive.')
  return record_stream.batched_examples(
      records_dir, split,
      lambda serialized, seed: make_vclr_example(serialized, seed, tuple(frame_size)),
      batch_size=batch_size, seed=seed, start_step=start_step, process_index=process_index,
      process_count=process_count, options=options)
