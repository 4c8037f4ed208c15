"""TSN fine-tuning on HMDB51 split 1 (REFERENCE.md: 8 segments, 8 test frames; paper 54.1).

  python -m vclr_jax.evaluate --config=configs/finetune_hmdb51.py --workdir=runs/k400 \
      --eval=finetune --config.data.records_dir=/data/hmdb51_records
"""

import ml_collections

from configs import finetune_ucf101


def get_config() -> ml_collections.ConfigDict:
  config = finetune_ucf101.get_config()
  config.name = 'hmdb51'
  config.dataset = 'hmdb51'
  config.data.records_dir = 'data/hmdb51_records'
  config.data.num_segments = 8
  config.data.test_frames = 8
  config.batch_size = 32  # 8 frames per video
  return config
