"""Frozen-encoder evaluation on HMDB51 split 1; everything else as configs/eval_ucf101.py.

  python -m vclr_jax.evaluate --config=configs/eval_hmdb51.py --workdir=runs/k400 \
      --eval=retrieval --config.data.records_dir=/data/hmdb51_records
"""

import ml_collections

from configs import eval_ucf101


def get_config() -> ml_collections.ConfigDict:
  config = eval_ucf101.get_config()
  config.dataset = 'hmdb51'
  config.data.records_dir = 'data/hmdb51_records'
  return config
