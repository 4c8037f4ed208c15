"""The released VCLR run on Kinetics-400, as close as this code gets (docs/training.md, "Paper
vs released code vs vclr_jax").

  # Records: 30 fps, 340x256, every video padded (last frame repeated) or trimmed to 300 frames.
  python -m input_pipeline.prepare --source=kinetics --csv=kinetics400/train.csv \
      --videos_dir=kinetics400/train --splits=train --out=/data/k400_records_300 \
      --resize=340x256 --fps=30 --frames_per_video=300
  python -m input_pipeline.prepare --source=kinetics --csv=kinetics400/val.csv \
      --videos_dir=kinetics400/val --splits=val --out=/data/k400_records_300 \
      --resize=340x256 --fps=30 --frames_per_video=300
  # MoCo v2, 200 epochs on ImageNet: the released run's initialisation.
  wget https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_200ep/moco_v2_200ep_pretrain.pth.tar
  python -m vclr_jax.main --config=configs/k400_reference.py --workdir=runs/k400_reference \
      --config.data.records_dir=/data/k400_records_300 \
      --config.init_from=$PWD/moco_v2_200ep_pretrain.pth.tar
  # Linear probe (paper: 64.1 top-1), then retrieval/fine-tuning as in the README.
  python -m vclr_jax.evaluate --config=configs/eval_k400.py --workdir=runs/k400_reference \
      --eval=linear --config.data.records_dir=/data/k400_records_300

What it sets on top of configs/k400.py (global batch 256, lr 0.1, 5 warm-up epochs, cosine to
1e-6, 400 epochs, queues of 131072, shuffle-BN on the key encoder, per-device BN online):
MoCo v2 initialisation (config.init_from is required: the run stops with an error naming it
when it is missing or the file does not exist), order embeddings normalised over the tuple's
frame axis (the released code's quirk) and the released code's BatchNorm batches
(model.bn_batching='reference': one extra online pass for xq, +1/3 online compute).
"""

import ml_collections

from configs import k400


def get_config() -> ml_collections.ConfigDict:
  config = k400.get_config()
  config.data.records_dir = 'data/k400_records_300'
  config.batch_size = 256
  config.optim.base_lr = 0.1
  config.num_epochs = 400
  config.model.order_norm = 'over_frames'
  config.model.bn_batching = 'reference'
  config.require_init_from = True
  return config
