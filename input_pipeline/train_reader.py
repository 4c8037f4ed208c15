"""The VCLR pretraining reader: endless per-host uint8 batches, layout of vclr_jax/batch.py.

The host reads, samples and decodes; nothing else. Per example it draws VCLR's six frame
indices (six clips' frames with ``clip_length`` > 1, vclr_sampling.py) from the video's frame
count, reads only those JPEGs from the shard (byte
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
from input_pipeline import split_index
from input_pipeline import vclr_sampling
from vclr_jax import batch as batch_layout


LABEL_FIELDS = ('anchor', 'query_perm', 'key_perm', 'order_label')


class SampledFrameReader:
  """Reads the sampled JPEGs of this host's videos; counts the bytes it read.

  Raises VideosTooShortError (a ValueError), naming the --min_frames to prepare with, when a
  video of the host is too short for the sampling (batch.min_video_frames).
  """

  def __init__(self, shards: list[dict], clip_length: int = 1, clip_stride: int = 1):
    self.frames = frame_index.HostFrames([shard['path'] for shard in shards])
    self.clip_length = clip_length
    self.clip_stride = clip_stride
    self.bytes_read = 0
    self.examples_read = 0
    short = int(np.sum(np.asarray(self.frames.frames_per_video)
                       < batch_layout.min_video_frames(clip_length, clip_stride)))
    if short:
      raise split_index.VideosTooShortError(
          f'{short} of the {len(self.frames.frames_per_video)} videos of this host are too '
          'short: ' + split_index.too_short_message(clip_length, clip_stride))

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
    """One host video -> its sampled JPEGs (not decoded; the six clips' frames one clip after
    the other), the sampling labels, a status."""
    num_frames = tf.gather(tf.constant(self.frames.frames_per_video, tf.int32),
                           element['video'])
    picked = vclr_sampling.sample_vclr_indices(num_frames, example_seed, self.clip_length,
                                               self.clip_stride)
    starts = tf.concat([picked['query_indices'], picked['key_indices']], 0)
    indices = tf.reshape(
        vclr_sampling.clip_frame_indices(starts, self.clip_length, self.clip_stride), [-1])
    jpegs, status = tf.py_function(self._read, [element['video'], indices],
                                   (tf.string, tf.int32))
    return {
        'jpegs': tf.ensure_shape(jpegs, [batch_layout.NUM_FRAMES * self.clip_length]),
        'status': tf.ensure_shape(status, []),
        'shard': element['shard'],
        'record': element['record'],
        **{name: picked[name] for name in LABEL_FIELDS},
    }


def decode_example(element, frame_size: tuple[int, int], clip_length: int = 1):
  """read()'s output -> the per-example fields of the batch layout."""
  frames = frame_decoding.decode_onto_canvas(
      element['jpegs'], batch_layout.NUM_FRAMES * clip_length, frame_size)
  return {'frames': tf.reshape(frames, batch_layout.example_frames_shape(frame_size, clip_length)),
          **{name: element[name] for name in LABEL_FIELDS}}


def placeholder_example(frame_size: tuple[int, int], clip_length: int = 1):
  """Fields of a skipped example (its row is refilled on the host: damage.SkippingBatches)."""
  return {'frames': tf.zeros(batch_layout.example_frames_shape(frame_size, clip_length),
                             tf.uint8),
          'anchor': tf.constant(0), 'order_label': tf.constant(0),
          'query_perm': tf.constant(batch_layout.IDENTITY),
          'key_perm': tf.constant(batch_layout.IDENTITY)}


def make_train_iterator(records_dir: str, split: str, *, batch_size: int,
                        frame_size: tuple[int, int], seed: int, start_step: int = 0,
                        clip_length: int = 1, clip_stride: int = 1,
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
    clip_length, clip_stride: L > 1 makes every one of the six frames a clip of L frames at
      stride ``clip_stride`` (config.data; vclr_sampling.py), frames (B, 6, L, H, W, 3); every
      video needs batch.min_video_frames(L, stride) frames, else a ValueError names the
      --min_frames to prepare with.
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
  if batch_size <= 0 or min(frame_size) <= 0 or clip_length <= 0 or clip_stride <= 0:
    raise ValueError(f'batch_size={batch_size}, frame_size={frame_size}, clip_length='
                     f'{clip_length} and clip_stride={clip_stride} must be positive.')
  frame_size = tuple(frame_size)
  readers = []

  def shard_elements_of(shards):
    readers.append(SampledFrameReader(shards, clip_length, clip_stride))
    if reader_stats is not None:
      reader_stats.append(readers[0])
    return readers[0].shard_elements

  return record_stream.batched_examples(
      records_dir, split, read=lambda element, seed: readers[0].read(element, seed),
      make=lambda element: decode_example(element, frame_size, clip_length),
      placeholder=lambda: placeholder_example(frame_size, clip_length),
      batch_size=batch_size, seed=seed, start_step=start_step, process_index=process_index,
      process_count=process_count, options=options, shard_elements_of=shard_elements_of)
