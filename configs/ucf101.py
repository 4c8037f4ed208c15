"""VCLR pretraining on UCF101 split 1 train (the paper's UCF101-pretrained retrieval rows).

  python -m input_pipeline.prepare ... (UCF101: docs/data.md) --out=data/ucf101_records
  python -m vclr_jax.main --config=configs/ucf101.py --workdir=runs/ucf101

Same recipe as configs/k400.py; what changes: the data (9,537 training videos, so an epoch
is 37 steps at batch 256) and more epochs for the smaller set, with the queues shrunk to
stay below the number of distinct videos' keys seen in a few epochs.
"""

import ml_collections

from configs import k400


def get_config() -> ml_collections.ConfigDict:
  config = k400.get_config()
  config.data.records_dir = 'data/ucf101_records'
  config.data.split = 'train'
  config.num_epochs = 800
  config.optim.warmup_epochs = 10
  config.queue_size = 16384
  config.checkpoint.every_steps = 500
  return config
