"""Damaged records: what the readers skip, how they name it, and when they give up.

A K400 copy always holds some broken files, and shared storage truncates or garbles a shard now
and then. The readers mark every example with a status instead of failing (see
record_stream.skip_damaged); ``SkippingBatches`` then, on the host, in batch order:

- warns once per damaged video, naming the shard file, the record's position in it and why;
- counts every skipped example (``skipped_examples``, shown in the training log and TensorBoard);
- training batches: fills a skipped example's row with a copy of an undamaged example of the same
  batch, so every batch keeps its size and every later batch stays where it was (a resumed run
  starts at step x batch size in the stream, damaged or not). The same damage therefore skips
  the same examples on a rerun and on a resume;
- evaluation batches: leaves the row as the reader made it, masked out like padding;
- once the distinct damaged videos of this host exceed ``max_skipped_fraction`` of the split's
  videos: evaluation raises ``DamagedDataError`` listing the damaged shards; training sets
  ``stop_error`` to that error and goes on, so that the training loop (vclr_jax/training_loop.py)
  stops every host at the same saved step and this host then raises it. Raising here would
  leave the other hosts of a pod waiting in the step's collectives.
- a training batch without one undamaged example (nothing to copy from) stops the run the
  same way, whatever the limit.

No TensorFlow here: the configs read the default below.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Iterator, Sequence

import numpy as np

from vclr_jax import cli_errors  # no TensorFlow, no JAX

DEFAULT_MAX_SKIPPED_FRACTION = 0.001  # of the split's videos (config.data.max_skipped_fraction)

OK = 0
UNREADABLE = 1
TRUNCATED_FRAME = 2
CHECKSUM = 3
UNDECODABLE = 4
REASONS = {
    UNREADABLE: 'unreadable (the shard is truncated or corrupt at or before this record)',
    TRUNCATED_FRAME: 'a sampled frame lies past the end of the shard (truncated shard)',
    CHECKSUM: 'a sampled frame does not match its checksum in the frame index (corrupt bytes)',
    UNDECODABLE: 'a frame is not a decodable JPEG',
}
TRACE_KEYS = ('status', 'shard', 'record')  # per-example fields the readers add for this module


class DamagedDataError(cli_errors.RunStopped):
  """More damaged videos than config.data.max_skipped_fraction allows; names the shards. The
  message's last line says how to repair them."""


class SkippingBatches:
  """Iterator over a reader's NumPy batches that skips, counts and names damaged examples.

  Args:
    batches: batches carrying the per-example fields of TRACE_KEYS.
    shard_paths: this host's shards, indexed by the 'shard' field.
    split_videos: videos of the whole split (the limit is a fraction of them).
    max_skipped_fraction: more distinct damaged videos on this host than this fraction of
      ``split_videos`` stops the run.
    fill: True for training (replace the row), False for evaluation (the reader's placeholder
      row is already masked out).
  """

  def __init__(self, batches: Iterator[dict[str, np.ndarray]], shard_paths: Sequence[str], *,
               split_videos: int, max_skipped_fraction: float, fill: bool):
    if not 0 <= max_skipped_fraction <= 1:
      raise ValueError(f'config.data.max_skipped_fraction={max_skipped_fraction} must be in '
                       '[0, 1].')
    self._batches = batches
    self._shard_paths = list(shard_paths)
    self._max_damaged = max_skipped_fraction * split_videos
    self._max_skipped_fraction = max_skipped_fraction
    self._fill = fill
    self.skipped_examples = 0
    self.stop_error: DamagedDataError | None = None  # training: set once, past the limit
    self.damaged: dict[tuple[int, int], int] = {}  # (shard, record) -> status
    self._last_good: dict[str, np.ndarray] | None = None  # training: the last batch handed out

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._batches))
    status, shards, positions = (batch.pop(key) for key in TRACE_KEYS)
    bad = np.flatnonzero(status != OK)
    if not len(bad):
      self._last_good = batch
      return batch
    for row in bad:
      self._note(int(shards[row]), int(positions[row]), int(status[row]))
    self.skipped_examples += len(bad)
    if len(self.damaged) > self._max_damaged and self.stop_error is None:
      self.stop_error = DamagedDataError(self._too_many())
      if not self._fill:
        raise self.stop_error
      logging.error('%s Every host stops at the next step and saves it.',
                    str(self.stop_error).splitlines()[0])
    return self._filled(batch, status) if self._fill else batch

  def _note(self, shard: int, record: int, status: int) -> None:
    if (shard, record) in self.damaged:
      return  # named when first met; later epochs only count it
    self.damaged[(shard, record)] = status
    logging.warning('Skipping record %d of %s: %s.', record, self._shard_paths[shard],
                    REASONS[status])

  def _filled(self, batch: dict[str, np.ndarray], status: np.ndarray) -> dict[str, np.ndarray]:
    good, bad = np.flatnonzero(status == OK), np.flatnonzero(status != OK)
    if not len(good):
      # Nothing to copy from: stop the run, every host together (as past the limit), and
      # hand out the last undamaged batch again (or the reader's blank placeholders) for
      # the one step before the stop.
      if self.stop_error is None:
        self.stop_error = DamagedDataError(
            f'Every example of a batch is damaged ({len(self.damaged)} damaged videos so '
            'far).\n' + self._repair_advice())
        logging.error('%s Every host stops at the next step and saves it.',
                      str(self.stop_error).splitlines()[0])
      return dict(self._last_good) if self._last_good is not None else batch
    sources = good[np.arange(len(bad)) % len(good)]
    filled = {}
    for name, value in batch.items():
      filled[name] = np.array(value)  # the reader's arrays are read-only
      filled[name][bad] = value[sources]
    self._last_good = filled
    return filled

  def damaged_shards(self) -> dict[str, int]:
    """Damaged videos met so far per shard path, in shard order."""
    per_shard = collections.Counter(shard for shard, _ in self.damaged)
    return {self._shard_paths[shard]: count for shard, count in sorted(per_shard.items())}

  def _too_many(self) -> str:
    return (f'{len(self.damaged)} damaged videos on this host, more than '
            f'config.data.max_skipped_fraction={self._max_skipped_fraction} of the split allows '
            f'({self._max_damaged:g}).\n' + self._repair_advice())

  def _repair_advice(self) -> str:
    listing = '; '.join(f'{path}: {count} damaged'
                        for path, count in self.damaged_shards().items())
    records_dir = os.path.dirname(os.path.dirname(self._shard_paths[0]))
    return (f'Damaged shards: {listing}.\nCheck them with `python -m input_pipeline.verify '
            f'--records={records_dir}`, delete the damaged ones and rerun the same `python -m '
            'input_pipeline.prepare` command to write them again, or raise '
            'config.data.max_skipped_fraction.')
