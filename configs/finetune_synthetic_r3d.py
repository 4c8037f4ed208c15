"""TSN fine-tuning of the 3D demo (configs/demo_r3d.py) on clips of the synthetic videos.

  python -m vclr_jax.evaluate --config=configs/finetune_synthetic_r3d.py \
      --workdir=runs/demo_r3d --eval=finetune

configs/finetune_synthetic.py on the clip records at the 3D demo's 80 px: each of 3 segments
gives one clip of the run's length and stride (read from the run), testing averages 8 uniform
clips. 20 epochs (320 steps of batch 16): 3D steps cost several times the 2D demo's. From the
seed-0 3D demo: test top-1 57.8%, top-5 94.0%, in 15 minutes on 2 CPU cores shared with a
test run (0.3 steps/s; 2026-12-05).
"""

import ml_collections

from configs import finetune_synthetic


def get_config() -> ml_collections.ConfigDict:
  config = finetune_synthetic.get_config()
  config.name = 'synthetic_r3d'
  config.data.records_dir = 'data/synthetic_clip_records'
  config.data.image_size = 80
  config.data.crop_size = 80
  config.data.resize_short_side = 92
  config.num_epochs = 20
  config.optim.decay_epochs = (15, 18)
  return config
