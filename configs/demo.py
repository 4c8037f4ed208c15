"""The demo: VCLR on the embedded synthetic video dataset, a few minutes on 2 CPU cores.

  python -m input_pipeline.synthetic --out=data/synthetic --videos_per_class=50 \
      --test_fraction=0.5
  python -m input_pipeline.prepare --source=list --root=data/synthetic --splits=train,test \
      --out=data/synthetic_records
  python -m vclr_jax.main --config=configs/demo.py --workdir=runs/demo

Same method as configs/k400.py at toy scale: a quarter-width ResNet-18 (16 channels in the
stem), 96 px crops, batch 32, 45 epochs of the 300 training videos (405 steps), the
reference's learning-rate rule (0.1 x batch / 256). Three settings differ from K400 because
the dataset and the run are tiny:
- the queues hold 64 keys, fewer than the videos seen between two visits of the same video
  (a key of the query's own video in the queue would be a false negative);
- the EMA momentum is 0.99, so that the key encoder follows the online one within a few
  hundred steps;
- no colour jitter and no grayscale (crops, flips and blur stay): in 405 steps the network
  learns to tell videos apart by their colours, and MoCo v2's jitter changes them in 80% of
  the crops. With it, the inter-frame and video-level terms end near 8% and 20% on the
  actions videos and even on still ones; without it, on the demo's videos, video and order
  pass 50% and inter ends near it (docs/evidence.md, "Does every term learn?"). K400's 400
  epochs learn through the jitter; pass --config.data.augment.jitter_probability=0.8
  --config.data.augment.grayscale_probability=0.2 for the full MoCo v2 recipe here.
"""

import ml_collections

from configs import k400


def get_config() -> ml_collections.ConfigDict:
  config = k400.get_config()
  config.data.records_dir = 'data/synthetic_records'
  config.data.image_size = 96
  # The synthetic videos are 96 to 160 px wide; the host resizes them onto this canvas.
  config.data.frame_size = (120, 160)
  config.data.augment.jitter_probability = 0.0
  config.data.augment.grayscale_probability = 0.0
  config.batch_size = 32
  config.num_epochs = 45
  config.queue_size = 64
  config.ema_momentum = 0.99
  config.model.depth = 18
  config.model.width_multiplier = 0.25
  # float32: on CPUs bfloat16 is slower (a 3x3 convolution of 32 x 56 x 56 x 64 on this
  # project's 2-core CPU: 0.107 s in bfloat16, 0.079 s in float32), and the demo's figures and
  # the test suite built on this config were measured in float32.
  config.model.compute_dtype = 'float32'
  config.optim.warmup_epochs = 2
  config.checkpoint.every_steps = 100
  config.log_every_steps = 15
  return config
