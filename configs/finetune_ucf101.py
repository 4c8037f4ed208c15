"""TSN fine-tuning on UCF101 split 1 (REFERENCE.md: 3 segments, 25 test frames; paper 85.6).

  python -m vclr_jax.evaluate --config=configs/finetune_ucf101.py --workdir=runs/k400 \
      --eval=finetune --config.data.records_dir=/data/ucf101_records

mmaction2's TSN recipe: dropout 0.4 before the classifier, SGD momentum 0.9, weight decay
5e-4, step decay x0.1. The run goes to RUN/finetune/<name>/ and resumes by itself.
"""

import ml_collections

from configs import reader


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = 'ucf101'  # subfolder of RUN/finetune/
  config.dataset = 'ucf101'
  config.seed = 0
  config.init = 'pretrained'  # or 'random' (the from-scratch baseline)
  config.checkpoint_step = -1  # pretraining checkpoint to start from; -1: the latest

  config.data = ml_collections.ConfigDict()
  # source 'records' (records_dir) or 'tfds' (tfds_name, tfds_data_dir): configs/reader.py.
  reader.add_source_fields(config.data, records_dir='data/ucf101_records')
  config.data.train_split = 'train'
  config.data.test_split = 'test'
  config.data.image_size = 224  # training crops
  config.data.num_segments = 3
  config.data.test_frames = 25
  config.data.crop_size = 224  # test centre crop
  config.data.resize_short_side = 0  # 0: crop the frames as stored
  reader.add_reader_fields(config.data, frame_size=(256, 340))  # training frames' canvas

  config.batch_size = 64  # global, videos
  config.test_batch_size = 16
  config.num_epochs = 75
  config.dropout = 0.4

  config.optim = ml_collections.ConfigDict()
  config.optim.base_lr = 0.01
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.decay_epochs = (30, 60)
  config.optim.decay_factor = 0.1

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 500
  config.checkpoint.keep = 2
  config.checkpoint.async_save = True
  config.log_every_steps = 20
  return config
