"""VCLR pretraining on Kinetics-400 with the released code's hyperparameters (REFERENCE.md).

  python -m vclr_jax.main --config=configs/k400.py --workdir=runs/k400 \
      --config.data.records_dir=/data/k400_records

Global batch 256 (8 GPUs x 32 in the released run; the paper text says 512), lr 0.1 x
batch/256, 5 warm-up epochs then cosine to 1e-6, 400 epochs, two queues of 131072 keys,
temperature 0.1, EMA 0.999, 224 px crops, ResNet-50 from random init (set init_from for
MoCo v2 / torchvision weights).
"""

import ml_collections

from configs import reader


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # source 'records' (prepared records, or a built TFDS dataset's version folder, in
  # records_dir) or 'tfds' (the built TFDS dataset tfds_name in tfds_data_dir, e.g.
  # --config.data.tfds_name=vclr_videos/kinetics400): configs/reader.py. Pretraining also
  # takes 'in_memory': generated videos held in memory (no TensorFlow; tests and benchmarks).
  reader.add_source_fields(config.data, records_dir='data/k400_records')
  config.data.split = 'train'
  config.data.image_size = 224
  config.data.in_memory_videos = 256  # only for source='in_memory'
  # Clips for a 3D backbone (model.architecture; the paper's Sec. 5): every frame of VCLR's
  # tuples becomes clip_length frames at clip_stride, inside its segment (1: single frames).
  config.data.clip_length = 1
  config.data.clip_stride = 1
  reader.add_reader_fields(config.data, frame_size=(256, 340))

  config.batch_size = 256  # global, over all hosts and devices
  config.num_epochs = 400
  config.queue_size = 131072
  config.ema_momentum = 0.999

  config.model = ml_collections.ConfigDict()
  # 'resnet' (2D, depth below) or a 3D backbone on clips: 'r3d_18' or 's3d' (needs
  # config.data.clip_length > 1).
  config.model.architecture = 'resnet'
  config.model.depth = 50
  config.model.width_multiplier = 1.0
  config.model.embed_dim = 128
  config.model.order_norm = 'per_frame'  # 'over_frames' reproduces the released code's quirk
  # Convolutions and activations in bfloat16; parameters, BN statistics, the heads, losses,
  # queues and optimiser state stay float32 (docs/training.md, Precision). 'float32': all
  # float32.
  config.model.compute_dtype = 'bfloat16'
  config.model.online_bn = 'per_device'  # or 'sync'
  config.model.key_bn = 'shuffle'  # or 'sync'
  # Which frames share a BN batch (docs/training.md, BatchNorm): 'fused' (one 6B key
  # pass, xq from the query tuple's pass) or 'reference' (the released code's four key passes
  # and separate xq pass; +1/3 online compute).
  config.model.bn_batching = 'fused'
  # Shuffle-BN (docs/training.md, BatchNorm): key frames are exchanged among shuffle_bn_devices
  # neighbouring devices (0: the largest count up to 8 that divides a device's 6 x B key
  # frames) and normalised in shuffle_bn_groups_per_device groups per device (0: max(1,
  # 8 // devices), so a single GPU still sees the 8 BN groups of the released 8-GPU run).
  config.model.shuffle_bn_devices = 0
  config.model.shuffle_bn_groups_per_device = 0

  config.loss = ml_collections.ConfigDict()
  config.loss.temperature = 0.1
  config.loss.weights = ml_collections.ConfigDict(
      dict(inter=1.0, intra=1.0, video=1.0, order=1.0))

  config.optim = ml_collections.ConfigDict()
  config.optim.base_lr = 0.1  # for a global batch of 256, scaled linearly
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.optim.warmup_epochs = 5
  config.optim.schedule = 'cosine'  # after the warm-up: 'cosine' to final_lr, or 'step'
  config.optim.final_lr = 1e-6  # 'cosine' only
  config.optim.decay_epochs = ()  # 'step' only: the rate is multiplied by decay_factor at each
  config.optim.decay_factor = 0.1

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 1000
  config.checkpoint.keep = 3
  config.checkpoint.async_save = True
  # Steps that are multiples of this are never deleted (0: off), so a divergence that built
  # up over many checkpoints can still be undone (about 0.65 GB each at ResNet-50).
  config.checkpoint.keep_every_steps = 20000
  # >= 0: resume from this kept checkpoint instead of the latest; later ones are moved aside
  # to checkpoints_moved_aside_<UTC time>/ (docs/training.md, Divergence). -1: the latest.
  config.checkpoint.resume_step = -1

  config.log_every_steps = 50
  # A run directory, an Orbax checkpoint directory, or (interop) a PyTorch checkpoint.
  config.init_from = ''
  config.require_init_from = False  # True: the run refuses to start without init_from
  config.max_nonfinite_in_a_row = 20

  # A jax.profiler trace of steps start_step to start_step + num_steps - 1, written by
  # process 0 to WORKDIR/profile/ (TensorBoard's profile plugin, Perfetto). 0 steps: off.
  config.profile = ml_collections.ConfigDict()
  config.profile.start_step = 10
  config.profile.num_steps = 0
  return config
