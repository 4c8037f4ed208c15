"""The 3D demo: VCLR on clip tuples of the embedded synthetic videos with a narrow R3D-18,
a few minutes on 2 CPU cores.

  python -m input_pipeline.synthetic --out=data/synthetic_actions --variant=actions
  python -m input_pipeline.prepare --source=list --root=data/synthetic_actions \
      --splits=train,test --out=data/synthetic_clip_records --min_frames=12
  python -m vclr_jax.main --config=configs/demo_r3d.py --workdir=runs/demo_r3d

  python -m vclr_jax.evaluate --config=configs/eval_synthetic_r3d.py --workdir=runs/demo_r3d \
      --eval=linear

configs/demo.py with the backbone and inputs of configs/ucf101_r3d.py shrunk: an eighth-width
R3D-18 (8 channels in the stem), clips of 2 consecutive frames, 80 px crops, batch 16. Clips
of 2 frames need videos of 12 frames (two disjoint clips per segment), so the preparation
above skips the shorter synthetic videos (0.6 s at 12 fps is 7 frames: 265 of 288 training
videos stay). 3D convolutions cost more than the 2D demo's on a CPU, so the run is short: 3
epochs, 48 steps, about 3 minutes on 2 idle CPU cores (0.35 steps/s after a minute of
compiling, measured 2026-12-05). What it learns, against random init, is in
docs/evidence.md ("The 3D demo"); 12 epochs did not do better.
"""

import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  config.data.records_dir = 'data/synthetic_clip_records'
  config.data.image_size = 80
  config.data.clip_length = 2
  config.data.clip_stride = 1
  config.model.architecture = 'r3d_18'
  config.model.width_multiplier = 0.125
  config.batch_size = 16
  config.queue_size = 32
  config.num_epochs = 3
  config.optim.warmup_epochs = 1
  config.checkpoint.every_steps = 25
  config.log_every_steps = 5
  return config
