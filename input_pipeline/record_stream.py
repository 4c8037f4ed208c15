"""The endless, deterministic, resumable stream of records that training readers consume.

Per host and epoch the order is fixed by the seed alone:

1. the host takes every ``process_count``-th shard of the split, starting at
   ``process_index``;
2. each epoch permutes the host's shards (stateless shuffle seeded by (seed, host, epoch)) and
   cuts the permutation into groups of ``cycle_length`` shards;
3. a group's shards are interleaved record by record (deterministic interleave) and shuffled
   through a buffer of ``shuffle_buffer`` records whose seed is derived from (epoch, group);
4. the groups follow each other, the epochs follow each other.

Every record comes with its own seed, derived from (seed, host, epoch, position in the
epoch), for the stateless random ops of sampling and augmentation: the stream is the same
however many threads run the maps.

Resuming at example ``n`` skips whole groups for free (their sizes are in the index) and
reads, without decoding, at most the records of one group before the first example it keeps.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from input_pipeline import records


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
  """How a training reader reads (config.data holds the same fields).

  ``cycle_length`` and ``shuffle_buffer`` fix the order of the stream: a resumed run must use
  the same ones. The others only change speed.
  """
  cycle_length: int = 16  # Shards interleaved at once (read in parallel).
  # Serialised videos held for shuffling (each holds all of a video's JPEGs: ~4 MB for a
  # 300-frame K400 record at 340x256, so 256 of them is ~1 GB of host memory).
  shuffle_buffer: int = 256
  num_parallel_calls: int = 0  # Threads that parse and decode; 0: tf.data.AUTOTUNE.
  prefetch: int = 2  # Batches prepared ahead.

  @classmethod
  def from_config(cls, data_config) -> 'ReaderOptions':
    return cls(**{f.name: data_config[f.name] for f in dataclasses.fields(cls)})

  @property
  def threads(self) -> int:
    return self.num_parallel_calls or tf.data.AUTOTUNE


def resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(process_index, process_count), jax's where not given, checked."""
  if process_index is None or process_count is None:
    import jax  # Only for the defaults: the readers themselves never touch devices.
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, process_count='
                     f'{process_count}).')
  return process_index, process_count


def host_shards(records_dir: str, split: str, process_index: int | None,
                process_count: int | None) -> tuple[list[dict], int, int]:
  """This host's shards (every process_count-th from process_index) and the resolved
  (process_index, process_count)."""
  process_index, process_count = resolve_process(process_index, process_count)
  index = records.read_index(records_dir, split)
  shards = index['shards'][process_index::process_count]
  return shards, process_index, process_count


def example_stream(shards: list[dict], *, seed: int, process_index: int, start_example: int,
                   options: ReaderOptions,
                   shard_elements: Callable[[tf.Tensor], tf.data.Dataset] | None = None
                   ) -> tf.data.Dataset:
  """Endless dataset of (example seed (2,) int64, element) from ``start_example``.

  ``start_example`` counts records of this host's stream from the very beginning (epoch 0).
  The element is the serialised record, or what ``shard_elements(shard number)`` yields for
  each record of a shard (in record order; the training reader yields video numbers and
  reads only the frames it samples).
  """
  host_videos = sum(shard['num_videos'] for shard in shards)
  if host_videos == 0:
    raise ValueError(
        f'Host {process_index} got {len(shards)} shards with no videos. Prepare the split with '
        'more shards (--num_shards of at least the number of hosts) or run on fewer hosts.')
  paths = tf.constant([shard['path'] for shard in shards])
  if shard_elements is None:
    shard_elements = lambda shard: tf.data.TFRecordDataset(tf.gather(paths, shard))
  sizes = tf.constant([shard['num_videos'] for shard in shards], tf.int64)
  num_shards = len(shards)
  cycle_length = min(options.cycle_length, num_shards)
  num_groups = -(-num_shards // cycle_length)
  start_epoch, start_within = divmod(start_example, host_videos)
  host_key = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, 0], tf.int64), process_index)

  def epoch_records(epoch):
    epoch_key = tf.random.experimental.stateless_fold_in(host_key, epoch)
    order = tf.random.experimental.stateless_shuffle(
        tf.range(num_shards), seed=tf.random.experimental.stateless_fold_in(epoch_key, 0))
    group_sizes = tf.math.segment_sum(tf.gather(sizes, order),
                                      tf.range(num_shards) // cycle_length)
    skip = tf.where(epoch == start_epoch, tf.constant(start_within, tf.int64), 0)
    group_ends = tf.cumsum(group_sizes)
    first_group = tf.reduce_sum(tf.cast(group_ends <= skip, tf.int64))
    skipped_by_groups = tf.reduce_sum(tf.where(group_ends <= skip, group_sizes, 0))
    group_key = tf.random.experimental.stateless_fold_in(epoch_key, 1)

    def group_records(group):
      group_shards = order[group * cycle_length:(group + 1) * cycle_length]
      shuffle_seed = tf.random.stateless_uniform(
          [], seed=tf.random.experimental.stateless_fold_in(group_key, group),
          minval=0, maxval=2**62, dtype=tf.int64)
      return (tf.data.Dataset.from_tensor_slices(group_shards)
              .interleave(shard_elements, cycle_length=cycle_length, block_length=1,
                          num_parallel_calls=cycle_length, deterministic=True)
              .shuffle(options.shuffle_buffer, seed=shuffle_seed))

    example_key = tf.random.experimental.stateless_fold_in(epoch_key, 2)

    def with_seed(position, element):
      return (tf.random.experimental.stateless_fold_in(example_key, skip + position), element)

    return (tf.data.Dataset.range(first_group, num_groups)
            .flat_map(group_records)
            .skip(skip - skipped_by_groups)
            .enumerate()
            .map(with_seed))

  return tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_records)


def batched_examples(records_dir: str, split: str,
                     make_example: Callable[[tf.Tensor, tf.Tensor], dict], *, batch_size: int,
                     seed: int, start_step: int, process_index: int | None,
                     process_count: int | None, options: ReaderOptions,
                     shard_elements_of: Callable[[list[dict]], Callable] | None = None
                     ) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-host NumPy batches of ``make_example(element, example_seed)``.

  The element is the serialised record, or, with ``shard_elements_of``, what the function it
  returns for this host's shards yields (see example_stream). Batch ``start_step`` of the run
  that started at 0 comes first (see the module docstring).
  """
  if batch_size <= 0 or start_step < 0:
    raise ValueError(f'batch_size={batch_size} must be positive and start_step={start_step} '
                     'non-negative.')
  shards, process_index, _ = host_shards(records_dir, split, process_index, process_count)
  stream = example_stream(shards, seed=seed, process_index=process_index,
                          start_example=start_step * batch_size, options=options,
                          shard_elements=shard_elements_of(shards) if shard_elements_of else None)
  return (stream
          .map(lambda example_seed, element: make_example(element, example_seed),
               num_parallel_calls=options.threads, deterministic=True)
          .batch(batch_size, drop_remainder=True)
          .prefetch(options.prefetch)
          .as_numpy_iterator())
