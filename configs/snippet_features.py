"""Snippet features for temporal action localization (BMN on ActivityNet, the paper's Table 5).

  python -m vclr_jax.evaluate --config=configs/snippet_features.py --workdir=runs/k400 \
      --eval=snippet_features --config.data.records_dir=/data/activitynet_records

The centre frame of every 16-frame snippet (ActivityNet's usual TSN snippets), 224 px centre
crop after resizing the short side to 256, rescaled to the 100 temporal positions of BMN's
ActivityNet features. docs/evaluation.md describes the files and the BMN settings.
"""

import ml_collections

from configs import eval_ucf101


def get_config() -> ml_collections.ConfigDict:
  config = eval_ucf101.get_config()
  config.dataset = 'activitynet'
  config.data.records_dir = 'data/activitynet_records'
  config.data.resize_short_side = 256
  config.snippets = ml_collections.ConfigDict()
  config.snippets.splits = 'train,val'  # comma-separated: --config.snippets.splits=val
  config.snippets.stride = 16  # frames per snippet; one feature per snippet
  config.snippets.num_positions = 100  # 0: one row per snippet, no rescaling
  config.snippets.batch_size = 64  # frames per forward pass (over this host's devices)
  return config
