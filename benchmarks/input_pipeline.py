r"""Input pipeline speed on the synthetic dataset: preparation and the VCLR training reader.

  python benchmarks/input_pipeline.py [--work_dir=/tmp/vclr_bench --image_size=224 \
      --batch_size=32 --batches=20]

Prints figures only. Preparation runs in one process (so its rate is per core); the reader
uses every core the process may run on, and its rates are also given per core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline import records  # pylint: disable=wrong-import-position
from input_pipeline import synthetic  # pylint: disable=wrong-import-position
from input_pipeline import train_reader  # pylint: disable=wrong-import-position


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--work_dir', default='',
                      help='where to generate and prepare the data (default: a temp dir)')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--batches', type=int, default=20, help='timed batches after warm-up')
  parser.add_argument('--warmup_batches', type=int, default=3)
  args = parser.parse_args(argv)
  work_dir = args.work_dir or tempfile.mkdtemp(prefix='vclr_input_bench_')
  cores = len(os.sched_getaffinity(0))

  start = time.perf_counter()
  synthetic.generate(os.path.join(work_dir, 'videos'), show_progress=False)
  generation_s = time.perf_counter() - start
  shutil.rmtree(os.path.join(work_dir, 'records'), ignore_errors=True)
  start = time.perf_counter()
  records_dir = synthetic.prepare_synthetic(work_dir)  # Finds the videos, prepares them.
  preparation_s = time.perf_counter() - start
  splits = [records.read_index(records_dir, split) for split in ('train', 'test')]
  videos = sum(index['num_videos'] for index in splits)
  seconds = sum(index['seconds'] for index in splits)
  frames = sum(index['num_frames'] for index in splits)
  print(f'synthetic generation: {videos} videos in {generation_s:.1f} s')
  print(f'preparation (1 process): {videos / preparation_s:.1f} videos/s, '
        f'{frames / preparation_s:.0f} frames/s, '
        f'{seconds / preparation_s:.1f} source seconds per wall second '
        f'(videos average {frames / videos:.0f} frames, {seconds / videos:.2f} s)')

  iterator = train_reader.make_train_iterator(
      records_dir, 'train', batch_size=args.batch_size, image_size=args.image_size, seed=0,
      process_index=0, process_count=1)
  for _ in range(args.warmup_batches):
    next(iterator)
  start = time.perf_counter()
  for _ in range(args.batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  examples = args.batches * args.batch_size
  decoded = examples * 6  # Six JPEGs decoded per example.
  crops = examples * 7  # Seven augmented crops per example.
  print(f'training reader at {args.image_size} px, batch {args.batch_size}, {cores} cores: '
        f'{examples / elapsed:.1f} videos/s ({examples / elapsed / cores:.1f} per core), '
        f'{decoded / elapsed:.0f} decoded frames/s ({decoded / elapsed / cores:.0f} per core), '
        f'{crops / elapsed:.0f} augmented crops/s ({crops / elapsed / cores:.0f} per core)')
  if not args.work_dir:
    shutil.rmtree(work_dir)


if __name__ == '__main__':
  main()
