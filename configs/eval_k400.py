"""Linear probe on Kinetics-400 (train -> val), the paper's 64.1 top-1 protocol.

  python -m vclr_jax.evaluate --config=configs/eval_k400.py --workdir=runs/k400 \
      --eval=linear --config.data.records_dir=/data/k400_records

240k x 2048 features: liblinear takes hours, so the default solver is the JAX squared-hinge
classifier (same objective as the SVM) on the accelerator in minibatches;
--config.linear.solver=svm gives the reference's exact solver. No thumbnails are kept.
"""

import ml_collections

from configs import eval_ucf101


def get_config() -> ml_collections.ConfigDict:
  config = eval_ucf101.get_config()
  config.dataset = 'k400'
  config.data.records_dir = 'data/k400_records'
  config.data.test_split = 'val'
  config.data.batch_size = 64
  config.features.thumbnail_size = 0
  config.linear.solver = 'jax'
  config.linear.jax.batch_size = 4096
  config.linear.jax.steps = 20000
  config.linear.jax.learning_rate = 1e-3
  return config
