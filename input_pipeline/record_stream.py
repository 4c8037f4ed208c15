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
from typing import Callable

import tensorflow as tf

from input_pipeline import damage
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
  # More damaged videos than this fraction of the split stops the run (input_pipeline/damage.py).
  max_skipped_fraction: float = damage.DEFAULT_MAX_SKIPPED_FRACTION

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


def shard_records(shards: list[dict]) -> Callable[[tf.Tensor], tf.data.Dataset]:
  """``shard number -> dataset`` of that shard's records, exactly ``num_videos`` of them.

  Each element is {'serialized', 'status', 'shard', 'record'}. A record the TFRecord reader
  cannot deliver (the file ends early, a length or data CRC fails: TensorFlow cannot find the
  next record after that) and every record after it in the shard come with status
  damage.UNREADABLE and no bytes, so the stream keeps its positions.
  """
  paths = tf.constant([shard['path'] for shard in shards])
  counts = tf.constant([shard['num_videos'] for shard in shards], tf.int64)

  def records_of(shard):
    readable = (tf.data.TFRecordDataset(tf.gather(paths, shard))
                .map(lambda serialized: (serialized, damage.OK))
                .ignore_errors())  # ends the shard at its first error
    rest = tf.data.Dataset.from_tensors((tf.constant(b''), damage.UNREADABLE)).repeat()
    return (readable.concatenate(rest).take(tf.gather(counts, shard)).enumerate()
            .map(lambda record, element: {
                'serialized': element[0], 'status': element[1],
                'shard': tf.cast(shard, tf.int32), 'record': tf.cast(record, tf.int32)}))

  return records_of


def skip_damaged(dataset: tf.data.Dataset, make: Callable[[dict], dict],
                 placeholder: Callable[[], dict], threads: int) -> tf.data.Dataset:
  """``make`` applied to each element, in order, never failing.

  Elements are dicts with damage.TRACE_KEYS. ``make(element)`` runs only on elements whose
  status is OK; when it raises (a JPEG libjpeg cannot decode, a record that does not parse),
  or the status was already bad, the output is ``placeholder()`` instead. Outputs carry the
  trace keys, the status updated (damage.UNDECODABLE for a failed make).
  """

  def trace(element, status):
    return {'status': tf.cast(status, tf.int32), 'shard': element['shard'],
            'record': element['record']}

  def attempt(element):
    checked = tf.debugging.assert_equal(element['status'], damage.OK)
    with tf.control_dependencies([checked]):  # nothing of a damaged element is decoded
      element = tf.nest.map_structure(tf.identity, element)
    return dict(make(element), **trace(element, damage.OK))

  def one(element):
    made = tf.data.Dataset.from_tensors(element).map(attempt).ignore_errors()
    status = tf.where(element['status'] == damage.OK, damage.UNDECODABLE, element['status'])
    instead = tf.data.Dataset.from_tensors(dict(placeholder(), **trace(element, status)))
    return made.concatenate(instead).take(1)

  # Every inner dataset yields one element, so the deterministic interleave keeps the order.
  return dataset.interleave(one, cycle_length=threads, block_length=1,
                            num_parallel_calls=threads, deterministic=True)


def example_stream(shards: list[dict], *, seed: int, process_index: int, start_example: int,
                   options: ReaderOptions,
                   shard_elements: Callable[[tf.Tensor], tf.data.Dataset] | None = None
                   ) -> tf.data.Dataset:
  """Endless dataset of (example seed (2,) int64, element) from ``start_example``.

  ``start_example`` counts records of this host's stream from the very beginning (epoch 0).
  The element is what ``shard_elements(shard number)`` yields for each record of a shard, in
  record order, exactly ``num_videos`` of them: by default shard_records' dicts (the training
  reader yields video numbers instead and reads only the frames it samples).
  """
  host_videos = sum(shard['num_videos'] for shard in shards)
  if host_videos == 0:
    raise ValueError(
        f'Host {process_index} got {len(shards)} shards with no videos. Prepare the split with '
        'more shards (--num_shards of at least the number of hosts) or run on fewer hosts.')
  if shard_elements is None:
    shard_elements = shard_records(shards)
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


def batched_examples(records_dir: str, split: str, *,
                     read: Callable[[dict, tf.Tensor], dict], make: Callable[[dict], dict],
                     placeholder: Callable[[], dict], batch_size: int, seed: int,
                     start_step: int, process_index: int | None, process_count: int | None,
                     options: ReaderOptions,
                     shard_elements_of: Callable[[list[dict]], Callable] | None = None
                     ) -> damage.SkippingBatches:
  """Endless per-host NumPy batches of ``make(read(element, example_seed))``.

  The element is shard_records' dict, or, with ``shard_elements_of``, what the function it
  returns for this host's shards yields (see example_stream). ``read`` must not fail (it
  returns the trace keys of damage.py); ``make`` may: see skip_damaged and
  damage.SkippingBatches. Batch ``start_step`` of the run that started at 0 comes first (see
  the module docstring).
  """
  if batch_size <= 0 or start_step < 0:
    raise ValueError(f'batch_size={batch_size} must be positive and start_step={start_step} '
                     'non-negative.')
  shards, process_index, _ = host_shards(records_dir, split, process_index, process_count)
  stream = example_stream(shards, seed=seed, process_index=process_index,
                          start_example=start_step * batch_size, options=options,
                          shard_elements=shard_elements_of(shards) if shard_elements_of else None)
  examples = stream.map(lambda example_seed, element: read(element, example_seed),
                        num_parallel_calls=options.threads, deterministic=True)
  batches = (skip_damaged(examples, make, placeholder, options.threads)
             .batch(batch_size, drop_remainder=True)
             .prefetch(options.prefetch)
             .as_numpy_iterator())
  return damage.SkippingBatches(
      batches, [shard['path'] for shard in shards],
      split_videos=records.read_index(records_dir, split)['num_videos'],
      max_skipped_fraction=options.max_skipped_fraction, fill=True)
