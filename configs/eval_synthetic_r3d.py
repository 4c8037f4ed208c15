"""Frozen-encoder evaluation of the 3D demo (configs/demo_r3d.py) on clips of the synthetic
videos; under a minute on 2 CPU cores.

  python -m vclr_jax.evaluate --config=configs/eval_synthetic_r3d.py --workdir=runs/demo_r3d \
      --eval=linear
  python -m vclr_jax.evaluate --config=configs/eval_synthetic_r3d.py --workdir=runs/demo_r3d \
      --eval=retrieval

configs/eval_synthetic.py on the clip records the 3D demo trained on, at its 80 px: every video
is 8 uniformly spaced clips of the run's length and stride (2 consecutive frames), each resized
to a short side of 92 and centre-cropped to 80, the clip features averaged.
"""

import ml_collections

from configs import eval_synthetic


def get_config() -> ml_collections.ConfigDict:
  config = eval_synthetic.get_config()
  config.data.records_dir = 'data/synthetic_clip_records'
  config.data.crop_size = 80
  config.data.resize_short_side = 92
  return config
