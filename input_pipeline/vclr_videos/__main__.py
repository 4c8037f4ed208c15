r"""Builds one config of the TFDS dataset ``vclr_videos`` (vclr_videos_dataset_builder.py).

  python -m input_pipeline.vclr_videos --config=ucf101_split1 --manual_dir=/data/manual \
      --data_dir=/data/tfds

This is what ``tfds build input_pipeline/vclr_videos`` would do, but TFDS 4.9.10's command line
imports apache-beam, which requirements.txt does not install (tensorflow/datasets#5463). It
prints the flags that train or evaluate from it (``--config.data.source=tfds`` with the
dataset's name and data_dir) and returns its version folder. A build that was cut off starts
again from the beginning (TFDS keeps nothing of an incomplete build).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import sources
from input_pipeline.vclr_videos import vclr_videos_dataset_builder


def main(argv: Sequence[str] | None = None) -> str:
  configs = {config.name: config for config in vclr_videos_dataset_builder.Builder.BUILDER_CONFIGS}
  parser = argparse.ArgumentParser(
      prog='python -m input_pipeline.vclr_videos', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, choices=sorted(configs))
  parser.add_argument('--manual_dir', required=True,
                      help="the dataset's files (see MANUAL_DOWNLOAD_INSTRUCTIONS)")
  parser.add_argument('--data_dir', required=True, help='where TFDS writes the dataset')
  parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                      help='processes that decode videos (default: all cores)')
  parser.add_argument('--num_shards', type=int, default=0,
                      help="files per split (0: TFDS's choice, 64 MB to 1 GB each); give at "
                      'least the number of hosts that will read the dataset')
  args = parser.parse_args(argv)
  config = configs[args.config]
  if not tf.io.gfile.isdir(args.manual_dir):
    raise SystemExit(f'--manual_dir={args.manual_dir} is not a folder. For '
                     f'--config={args.config} it must hold {config.manual_layout}')
  builder = vclr_videos_dataset_builder.Builder(config=args.config, data_dir=args.data_dir,
                                                workers=args.workers)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=args.manual_dir, num_shards=args.num_shards or None))
  except sources.SourceError as error:
    raise SystemExit(str(error)) from None
  print(f'Built {builder.info.full_name} ({", ".join(builder.info.splits.keys())}) in '
        f'{builder.data_dir}. Train or evaluate from it with --config.data.source=tfds '
        f'--config.data.tfds_name={builder.name}/{args.config} '
        f'--config.data.tfds_data_dir={args.data_dir}')
  return os.fspath(builder.data_dir)


if __name__ == '__main__':
  from vclr_jax import cli_errors
  cli_errors.guard(main, sys.argv[1:])
