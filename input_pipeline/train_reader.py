"""The VCLR pretraining reader: endless per-host uint8 batches, layout of vclr_jax/batch.py.

The host reads, samples and decodes; nothing else. Per example it draws VCLR's six frame
indices from the video's frame count, reads only those six JPEGs from the shard (byte
ranges from the frame index, input_pipeline/frame_index.py: about 80 KB of a 3.9 MB K400
record), decodes them onto the ``frame_size`` canvas and ships them as uint8 with the
sampling labels. Crops, flips and colour augmentation run on the accelerator inside the
train step (vclr_jax/augment.py).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from input_pipeline import damage
from input_pipeline import frame_decoding
from input_pipeline import frame_index
from input_pipeline import record_stream
from input_pipeline import vclr_sampling
from vclr_jax import batch as batch_layout


LABEL_FIELDS = ('anchor', 'query_perm', 'key_perm', 'order_label')


class SampledFrameReader:
  """Reads the sampled JPEGs of this host's videos; counts the bytes it read."""

  def __init__(self, shards: list[dict]):
    self.frames = frame_index.HostFrames([shard['path'] for shard in shards])
    self.bytes_read = 0
    self.examples_read = 0

  def shard_elements(self, shard):
    """One shard's videos in record order (see record_stream.example_stream): dicts of the
    host video number and damage.py's trace keys."""
    first = tf.constant(np.concatenate([[0], np.cumsum(self.frames.videos_per_shard)[:-1]]),
                        tf.int64)
    count = tf.constant(self.frames.videos_per_shard, tf.int64)
    return tf.data.Dataset.range(count[shard]).map(lambda record: {
        'video': first[shard] + record, 'status': damage.OK,
        'shard': tf.cast(shard, tf.int32), 'record': tf.cast(record, tf.int32)})

  def _read(self, video, indices):
    jpegs, status = self.frames.read(int(video), indices.numpy())
    self.bytes_read += sum(len(j) for j in jpegs)
    self.examples_read += 1
    return tf.constant(jpegs if status == damage.OK else [b''] * len(indices)), status

  def read(self, element, example_seed):
    """One host video -> its six sampled JPEGs (not decoded), the sampling labels, a status."""
    num_frames = tf.gather(tf.constant(self.frames.frames_per_video, tf.int32),
                           element['video'])
    picked = vclr_sampling.sample_vclr_indices(num_frames, example_seed)
    indices = tf.concat([picked['query_indices'], picked['key_indices']], 0)
    jpegs, status = tf.py_function(self._read, [element['video'], indices],
                                   (tf.string, tf.int32))
    return {
        'jpegs': tf.ensure_shape(jpegs, [batch_layout.NUM_FRAMES]),
        'status': tf.ensure_shape(status, []),
        'shard': element['shard'],
        'record': element['record'],
        **{name: picked[name] for name in LABEL_FIELDS},
    }


def decode_example(element, frame_size: tuple[int, int]):
  """read()'s output -> the per-example fields of the batch layout."""
  return {'frames': frame_decoding.decode_onto_canvas(element['jpegs'], batch_layout.NUM_FRAMES,
                                                      frame_size),
          **{name: element[name] for name in LABEL_FIELDS}}


def placeholder_example(frame_size: tuple[int, int]):
  """Fields of a skipped example (its row is refilled on the host: damage.SkippingBatches)."""
  return {'frames': tf.zeros((batch_layout.NUM_FRAMES,) + frame_size + (3,), tf.uint8),
          'anchor': tf.constant(0), 'order_label': tf.constant(0),
          'query_perm': tf.constant(batch_layout.IDENTITY),
          'key_perm': tf.constant(batch_layout.IDENTITY)}


def make_train_iterator(records_dir: str, split: str, *, batch_size: int,
                        frame_size: tuple[int, int], seed: int, start_step: int = 0,
                        process_index: int | None = None, process_count: int | None = None,
                        options: record_stream.ReaderOptions = record_stream.ReaderOptions(),
                        reader_stats: list | None = None) -> damage.SkippingBatches:
  """Endless per-host VCLR batches (vclr_jax/batch.py layout) of ``batch_size`` examples.

  Args:
    records_dir, split: prepared records (``records_dir/split/index.json``) with their frame
      index (``shard-*.frames.npz``).
    batch_size: examples per batch on this host.
    frame_size: (height, width) of the uint8 canvas; frames of another size are resized
      (bilinear, antialiased) on the host.
    seed: fixes the whole sequence of batches.
    start_step: the first batch yielded is batch ``start_step`` of the run that started at 0
      (resuming); the order stays the same only with the same batch_size, process layout and
      ``options.cycle_length`` / ``options.shuffle_buffer``.
    process_index, process_count: this host and the number of hosts (default: jax's);
      host i reads shards i, i + count, ...
    options: thread counts, interleaving, shuffling, prefetch and the damage limit
      (config.data).
    reader_stats: if given, the SampledFrameReader is appended (bytes read, for benchmarks).

  Returns:
    The iterator; its ``skipped_examples`` counts damaged examples skipped so far (damage.py).
  """
  if batch_size <= 0 or min(frame_size) <= 0:
    raise ValueError(f'batch_size={batch_size} and frame_size={frame_size} must be positive.')
  frame_size = tuple(frame_size)
  readers = []

  def shard_elements_of(shards):
    readers.append(SampledFrameReader(shards))
    if reader_stats is not None:
      reader_stats.append(readers[0])
    return readers[0].shard_elements

  return record_stream.batched_examples(
      records_dir, split, read=lambda element, seed: readers[0].read(element, seed),
      make=lambda element: decode_example(element, frame_size),
      placeholder=lambda: placeholder_example(frame_size),
      batch_size=batch_size, seed=seed, start_step=start_step, process_index=process_index,
      process_count=process_count, options=options, shard_elements_of=shard_elements_of)
