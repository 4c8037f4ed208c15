"""TSN fine-tuning on the synthetic dataset: three to four minutes on 2 CPU cores.

  python -m vclr_jax.evaluate --config=configs/finetune_synthetic.py --workdir=runs/demo \
      --eval=finetune
"""

import ml_collections

from configs import finetune_ucf101


def get_config() -> ml_collections.ConfigDict:
  config = finetune_ucf101.get_config()
  config.name = 'synthetic'
  config.dataset = 'synthetic'
  config.data.records_dir = 'data/synthetic_records'
  config.data.image_size = 96
  config.data.frame_size = (120, 160)
  config.data.test_frames = 8
  config.data.crop_size = 96
  config.data.resize_short_side = 110
  config.batch_size = 16
  # Long and fast enough for a network trained from random init (the supervised reference of
  # docs/evidence.md) to learn the classes: 1080 steps of batch 16.
  config.num_epochs = 60
  config.optim.base_lr = 0.1
  config.optim.decay_epochs = (45, 55)
  config.checkpoint.every_steps = 100
  config.log_every_steps = 40
  return config
