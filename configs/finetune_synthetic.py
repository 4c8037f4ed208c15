"""TSN fine-tuning on the synthetic dataset: a couple of minutes on 2 CPU cores.

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
  config.data.test_frames = 8
  config.data.crop_size = 96
  config.data.resize_short_side = 110
  config.batch_size = 16
  config.num_epochs = 10
  config.optim.base_lr = 0.05
  config.optim.decay_epochs = (6, 9)
  config.checkpoint.every_steps = 20
  config.log_every_steps = 5
  return config
