"""Frozen-encoder evaluation on the synthetic dataset (a few seconds on 2 CPU cores).

  bash scripts/demo.sh   (makes data/synthetic_records and runs/demo)
  python -m vclr_jax.evaluate --config=configs/eval_synthetic.py --workdir=runs/demo --eval=linear

Frames are resized to a short side of 110 and centre-cropped to 96 (configs/demo.py trains
at 96 px); 8 frames per video, since the videos are short (6 to 60 frames).
"""

import ml_collections

from configs import eval_ucf101


def get_config() -> ml_collections.ConfigDict:
  config = eval_ucf101.get_config()
  config.dataset = 'synthetic'
  config.data.records_dir = 'data/synthetic_records'
  config.data.num_frames = 8
  config.data.crop_size = 96
  config.data.resize_short_side = 110
  config.data.batch_size = 16
  config.features.thumbnail_size = 48
  config.retrieval.ks = (1, 5, 10)
  return config
