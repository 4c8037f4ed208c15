r"""Checks prepared records shard by shard and lists the good and the damaged ones.

  python -m input_pipeline.verify --records=records/k400 [--split=train] [--quick]

Full check (default), per shard: the file has the byte size and record count preparation
recorded; every record passes TensorFlow's TFRecord CRCs, parses, and every JPEG of it decodes;
the frame index beside it (``shard-*.frames.npz``) equals one rebuilt from the records. Each
shard is read twice (once for the decodes, once for the frame index).
``--quick`` checks only sizes, record counts (from the TFRecord length headers: one small read
per record) and that the frame index exists, instead of reading every byte (K400: about
1.1 TB of records at 4.6 MB each).

Prints a table of every shard and exits with status 1 if any is damaged. Damaged shards are
written again by deleting them and rerunning the same ``python -m input_pipeline.prepare``
command (a rerun already rewrites a shard whose size or record count no longer matches).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

import numpy as np
import tensorflow as tf
import tqdm

from input_pipeline import damage
from input_pipeline import frame_decoding
from input_pipeline import frame_index
from input_pipeline import record_stream
from input_pipeline import records


@dataclasses.dataclass(frozen=True)
class ShardReport:
  split: str
  path: str
  num_videos: int
  problems: tuple[str, ...]

  @property
  def damaged(self) -> bool:
    return bool(self.problems)


def quick_problems(shard: dict) -> list[str]:
  """Size, record count and frame index presence of one shard (an index.json entry)."""
  mismatch = frame_index.shard_mismatch(shard['path'], shard)
  problems = [mismatch] if mismatch else []
  if not tf.io.gfile.exists(frame_index.index_path(shard['path'])):
    problems.append(f'frame index {frame_index.index_path(shard["path"])} is missing')
  return problems


def _decodes_every_frame(element):
  video = records.parse_video(element['serialized'])
  return {'frames': tf.shape(frame_decoding.decode_frames(video['frames']))[0]}


def record_problems(shard: dict) -> list[str]:
  """Records that are unreadable (CRC, truncation) or hold a JPEG that does not decode."""
  examples = record_stream.skip_damaged(
      record_stream.shard_records([shard])(tf.constant(0, tf.int64)), _decodes_every_frame,
      lambda: {'frames': tf.constant(0)}, tf.data.AUTOTUNE)
  bad: dict[int, list[int]] = {}  # status -> record positions
  for position, example in enumerate(examples.as_numpy_iterator()):
    if example['status'] != damage.OK:
      bad.setdefault(int(example['status']), []).append(position)
  return [f'{len(positions)} records {damage.REASONS[status]}, the first is record '
          f'{positions[0]}' for status, positions in bad.items()]


def frame_index_problems(shard: dict) -> list[str]:
  """Whether the saved frame index equals the one the (undamaged) records give."""
  saved = frame_index.read_index_file(shard['path'])
  rebuilt = frame_index.index_of_shard(shard['path']).arrays()
  differing = sorted(name for name in rebuilt
                     if name not in saved or not np.array_equal(saved[name], rebuilt[name]))
  return [f'frame index differs from the records ({", ".join(differing)})'] if differing else []


def verify_shard(split: str, shard: dict, quick: bool) -> ShardReport:
  problems = quick_problems(shard)
  if not quick and tf.io.gfile.exists(shard['path']):
    problems += record_problems(shard)
    if not problems:
      problems += frame_index_problems(shard)
  return ShardReport(split, shard['path'], shard['num_videos'], tuple(problems))


def verify(records_dir: str, splits: Sequence[str], quick: bool,
           show_progress: bool = True) -> list[ShardReport]:
  shards = [(split, shard) for split in splits
            for shard in records.read_index(records_dir, split)['shards']]
  return [verify_shard(split, shard, quick)
          for split, shard in tqdm.tqdm(shards, unit='shard', disable=not show_progress,
                                        desc='quick check' if quick else 'full check')]


def format_table(reports: Sequence[ShardReport]) -> str:
  rows = [('split', 'shard', 'videos', 'result')]
  rows += [(r.split, os.path.basename(r.path), str(r.num_videos),
            'DAMAGED: ' + '; '.join(r.problems) if r.damaged else 'ok') for r in reports]
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  lines = ['  '.join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + '  ' + row[3]
           for row in rows]
  damaged = [r for r in reports if r.damaged]
  lines.append(f'{len(reports) - len(damaged)} good, {len(damaged)} damaged of {len(reports)} '
               'shards.')
  if damaged:
    lines.append('Damaged: ' + ' '.join(r.path for r in damaged))
    lines.append('Delete them and rerun the same `python -m input_pipeline.prepare` command to '
                 'write them again.')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m input_pipeline.verify', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--records', required=True, help='prepared records folder')
  parser.add_argument('--split', default='', help='one split (default: every prepared split)')
  parser.add_argument('--quick', action='store_true',
                      help='check sizes, record counts and frame indexes only (no decoding)')
  args = parser.parse_args(argv)
  if not tf.io.gfile.isdir(args.records):
    raise FileNotFoundError(f'--records={args.records} is not a folder: pass the --out folder of '
                            '`python -m input_pipeline.prepare`.')
  if tf.io.gfile.exists(os.path.join(args.records, records.TFDS_INFO_FILENAME)):
    # Its shards have no summaries (sizes, counts) and hold tf.train.Examples.
    raise SystemExit(f'--records={args.records} is a TFDS dataset: verify checks folders written '
                     'by `python -m input_pipeline.prepare`. The readers still check every '
                     "record's CRCs and every sampled frame's checksum as they read it.")
  splits = [args.split] if args.split else records.prepared_splits(args.records)
  if not splits:
    raise FileNotFoundError(f'--records={args.records} holds no prepared split (no '
                            f'<split>/{records.INDEX_FILENAME}).')
  reports = verify(args.records, splits, args.quick)
  print(format_table(reports))
  return 1 if any(report.damaged for report in reports) else 0


if __name__ == '__main__':
  from vclr_jax import cli_errors
  sys.exit(cli_errors.guard(main, sys.argv[1:]))
