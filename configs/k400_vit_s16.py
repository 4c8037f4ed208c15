"""VCLR pretraining of a ViT-S/16 on Kinetics-400 with MoCo v3's ViT recipe.

  python -m vclr_jax.main --config=configs/k400_vit_s16.py --workdir=runs/k400_vit_s16 \
      --config.data.records_dir=/data/k400_records

Everything not listed here is configs/k400.py's (data, 224 px crops, queues, the four losses
and their weights, the EMA, 400 epochs of K400 at VCLR's global batch of 256). The backbone and
the optimiser follow MoCo v3 (Chen, Xie, He, "An Empirical Study of Training Self-Supervised
Vision Transformers", arXiv 2104.02057; its code, facebookresearch/moco-v3, CONFIG.md
"ViT-Small" and main_moco.py), scaled to VCLR's batch:
- backbone timm's vit_small_patch16_224 (width 384, 12 blocks, 6 heads; MoCo v3's own ViT-S
  has 12 heads of width 32, --config.model.vit_heads=12, with the same weights' shapes), the
  class token after the final norm as the feature;
- AdamW (CONFIG.md: --optimizer=adamw) with torch's default betas (0.9, 0.999), which
  main_moco.py keeps, and eps 1e-8; weight decay 0.1 (--weight-decay=.1), here not on norms,
  biases, the position embedding and the class token (timm's and DeiT's rule; MoCo v3's code
  decays every parameter);
- learning rate 1.5e-4 x batch / 256 (--lr=1.5e-4; main_moco.py: args.lr * batch_size / 256),
  so 1.5e-4 at batch 256; 40 warm-up epochs (--warmup-epochs=40), then cosine to 0 (MoCo v3's
  half-cycle cosine; the warm-up here starts at peak / 100 as every vclr_jax schedule);
- a random, fixed patch projection (--stop-grad-conv1; paper Sec. 4.2: freezing it avoids the
  instability that shows as dips in the training curve);
- temperature 0.2 (--moco-t=.2) in VCLR's contrastive losses;
- EMA momentum 0.99 (main_moco.py's --moco-m default). MoCo v3 raises it to 1 along a half
  cosine over training (--moco-m-cos); vclr_jax keeps it constant.
MoCo v3's ViT also fixes the position embedding to 2D sin-cos; here it is learned, as timm's.
"""

import ml_collections

from configs import k400


def apply_vit_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Turns a ResNet config into this file's ViT-S/16 with MoCo v3's optimiser (in place)."""
  config.model.architecture = 'vit_s16'
  # Overrides of the ViT's size for small runs (0: the architecture's own) and its pooling:
  # 'token' (the class token after the final norm) or 'avg' (the mean patch token, then
  # timm's fc_norm).
  config.model.vit_width = 0
  config.model.vit_depth = 0
  config.model.vit_heads = 0
  config.model.vit_pool = 'token'
  config.model.freeze_patch_embedding = True
  config.optim.name = 'adamw'
  config.optim.betas = (0.9, 0.999)
  config.optim.base_lr = 1.5e-4
  config.optim.weight_decay = 0.1
  config.optim.warmup_epochs = 40
  config.optim.final_lr = 0.0
  config.loss.temperature = 0.2
  config.ema_momentum = 0.99
  return config


def get_config() -> ml_collections.ConfigDict:
  return apply_vit_recipe(k400.get_config())
