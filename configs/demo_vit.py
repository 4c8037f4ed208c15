"""The demo with a tiny Vision Transformer and MoCo v3's optimiser (configs/k400_vit_s16.py).

  python -m vclr_jax.main --config=configs/demo_vit.py --workdir=runs/demo_vit

configs/demo.py's data, batch, queues, EMA, warm-up and 405 steps, with a ViT of width 128, 4 blocks
and 4 heads on 16 px patches (6 x 6 patches of a 96 px crop; timm's ViT-Ti layout at a quarter
of its depth and two thirds of its width), trained with AdamW as configs/k400_vit_s16.py (the
frozen random patch projection, weight decay 0.1 off norms, biases, position embedding and
class token, temperature 0.2). The learning rate is larger than MoCo v3's 1.5e-4 x batch / 256:
a network this small trained this briefly learns nothing at that rate.

Measured 2026-12-06 on 2 CPU cores shared with other jobs (one seed; scripts/demo.sh's steps
with this config): 405 steps in 14 min; final training accuracies inter 0.64, intra 0.88,
video 0.79, order 0.52; linear top-1 26.0%, retrieval R@1 21.9% on the synthetic test split.
"""

import ml_collections

from configs import demo
from configs import k400_vit_s16


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  warmup_epochs = config.optim.warmup_epochs
  k400_vit_s16.apply_vit_recipe(config)
  config.model.architecture = 'vit_ti16'
  config.model.vit_width = 128
  config.model.vit_depth = 4
  config.model.vit_heads = 4
  config.optim.base_lr = 4e-3  # x 32 / 256: a peak of 5e-4
  config.optim.warmup_epochs = warmup_epochs
  config.ema_momentum = 0.99  # demo.py's, and MoCo v3's
  return config
