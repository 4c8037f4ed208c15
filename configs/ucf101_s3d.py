"""VCLR with a 3D CNN: S3D on clip tuples of UCF101 split 1 (the paper's Sec. 5 and appendix
A.3, "VCLR with 3D CNNs": S3D as in CoCLR, 3 segments, a 32-frame clip from each).

  python -m input_pipeline.prepare --source=ucf101 --root=UCF-101 \
      --splits_dir=ucfTrainTestlist --split_number=1 --splits=train,test \
      --out=data/ucf101_s3d_records --resize=340x256 --min_frames=192
  python -m vclr_jax.main --config=configs/ucf101_s3d.py --workdir=runs/ucf101_s3d \
      --config.data.records_dir=data/ucf101_s3d_records

Appendix recipe: batch 64, 300 epochs, the learning rate divided by 10 at epochs 250 and 280.
Choices the appendix leaves to its citations or whose numbers our copy of the text lacks:
- frames: 128 px crops and 32 consecutive frames per clip (CoCLR's S3D input).
- video length: the query and key clips of a segment never share a frame here, so a video
  needs 6 x 32 = 192 frames (7.7 s at 25 fps), hence --min_frames=192, which leaves out much
  of UCF101 (the reader refuses records holding a shorter video). The appendix draws its
  32-frame clips from thirds of the videos, so on shorter videos its two clips must overlap.
- the initial learning rate: missing from the text; this keeps the 2D recipe's SGD with
  base_lr 0.1 x batch / 256 (CoCLR itself trained with Adam at 1e-3), and no warm-up.
- the rest (queues, EMA, temperature, augmentation, shuffle-BN) is configs/ucf101.py's.
"""

import ml_collections

from configs import ucf101


def get_config() -> ml_collections.ConfigDict:
  config = ucf101.get_config()
  config.data.records_dir = 'data/ucf101_s3d_records'
  config.data.image_size = 128
  config.data.clip_length = 32
  config.data.clip_stride = 1
  config.model.architecture = 's3d'
  config.batch_size = 64
  config.num_epochs = 300
  config.optim.schedule = 'step'
  config.optim.decay_epochs = (250, 280)
  config.optim.decay_factor = 0.1
  config.optim.warmup_epochs = 0
  return config
