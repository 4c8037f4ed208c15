"""Frozen-encoder evaluation on UCF101 split 1 (REFERENCE.md "Evaluation protocols").

  python -m vclr_jax.evaluate --config=configs/eval_ucf101.py --workdir=runs/k400 \
      --eval=retrieval --config.data.records_dir=/data/ucf101_records

Features: 30 uniform frames, centre crop 224 of the 340x256 frames (no resize), averaged.
Linear: liblinear -s 2 (LinearSVC), C = 1, no bias. Retrieval: test queries vs train gallery,
cosine, R@1/5/10/20/50. The other eval_*.py configs start from this one.
"""

import ml_collections

from configs import reader


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = 'ucf101'
  config.seed = 0
  # -1: the run's latest checkpoint. random_init evaluates the untrained network instead
  # (same architecture, initialised with config.seed): the baseline of the evidence table.
  config.checkpoint_step = -1
  config.random_init = False
  # Name of a TSN fine-tuning run (RUN/finetune/<name>) whose backbone is evaluated instead:
  # the supervised reference of the evidence table.
  config.finetuned_backbone = ''

  config.data = ml_collections.ConfigDict()
  # source 'records' (records_dir) or 'tfds' (tfds_name, tfds_data_dir): configs/reader.py.
  reader.add_source_fields(config.data, records_dir='data/ucf101_records')
  config.data.train_split = 'train'  # linear training set and retrieval gallery
  config.data.test_split = 'test'  # linear test set and retrieval queries
  config.data.num_frames = 30
  config.data.crop_size = 224
  config.data.resize_short_side = 0  # 0: crop the frames as stored (340x256 in the reference)
  config.data.batch_size = 16  # videos per global batch (x num_frames frames through the net)

  config.features = ml_collections.ConfigDict()
  # Side of the middle-frame thumbnails kept with the features for the retrieval picture;
  # 0 keeps none (Kinetics: 240k videos).
  config.features.thumbnail_size = 64

  config.linear = ml_collections.ConfigDict()
  config.linear.solver = 'svm'  # 'svm' (scikit-learn, the reference) or 'jax' (accelerator)
  config.linear.C = 1.0
  config.linear.jax = ml_collections.ConfigDict()
  config.linear.jax.loss = 'squared_hinge'  # or 'softmax'
  config.linear.jax.l2 = -1.0  # -1: 1 / (C N), the SVM's own regularisation
  config.linear.jax.batch_size = 0  # 0: full batch with L-BFGS; else Adam on minibatches
  config.linear.jax.steps = 300
  config.linear.jax.learning_rate = 0.01  # Adam only
  config.linear.jax.seed = 0

  config.retrieval = ml_collections.ConfigDict()
  config.retrieval.ks = (1, 5, 10, 20, 50)
  config.retrieval.picture_queries = 4
  config.retrieval.picture_neighbours = 3
  return config
