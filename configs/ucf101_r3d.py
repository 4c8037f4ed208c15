"""VCLR with a 3D CNN: R3D-18 on clip tuples of UCF101 split 1 (the paper's Sec. 5 and appendix
A.3, "VCLR with DPC": R3D-18 as in DPC, 3 segments, a 5-frame clip from each).

  python -m input_pipeline.prepare --source=ucf101 --root=UCF-101 \
      --splits_dir=ucfTrainTestlist --split_number=1 --splits=train,test \
      --out=data/ucf101_clip_records --resize=340x256 --min_frames=78
  python -m vclr_jax.main --config=configs/ucf101_r3d.py --workdir=runs/ucf101_r3d \
      --config.data.records_dir=data/ucf101_clip_records

Appendix recipe: batch 128, 300 epochs, the learning rate divided by 10 at epochs 150 and 250.
Choices the appendix leaves to its citations or whose numbers our copy of the text lacks:
- frames: 128 px crops (DPC's UCF101 resolution); clips of 5 frames at stride 3 (DPC samples
  every third frame), i.e. a clip spans 13 frames. The query and key clips of a segment never
  share a frame, so a video needs 6 x 13 = 78 frames (3.1 s at 25 fps): hence --min_frames=78,
  which leaves out UCF101's shorter videos (the reader refuses records holding any).
- the initial learning rate: missing from the text; this keeps the 2D recipe's SGD with
  base_lr 0.1 x batch / 256 (DPC itself trained with Adam at 1e-3), and no warm-up.
- the rest (queues, EMA, temperature, augmentation, shuffle-BN) is configs/ucf101.py's.
"""

import ml_collections

from configs import ucf101


def get_config() -> ml_collections.ConfigDict:
  config = ucf101.get_config()
  config.data.records_dir = 'data/ucf101_clip_records'
  config.data.image_size = 128
  config.data.clip_length = 5
  config.data.clip_stride = 3
  config.model.architecture = 'r3d_18'
  config.batch_size = 128
  config.num_epochs = 300
  config.optim.schedule = 'step'
  config.optim.decay_epochs = (150, 250)
  config.optim.decay_factor = 0.1
  config.optim.warmup_epochs = 0
  return config
