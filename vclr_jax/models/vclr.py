"""The VCLR network: a ResNet backbone, four projection heads and the order classifier.

A Vision Transformer (``architecture`` 'vit_ti16', 'vit_s16' or 'vit_b16', models/vit.py) takes
the ResNet's place on frames; it has no BatchNorm, so the BatchNorm settings below do not apply.

With a 3D backbone (``architecture`` 'r3d_18' or 's3d', models/video3d.py; the paper's Sec. 5)
every "frame" below is a clip: the backbone turns each (L, H, W, 3) clip into one feature, and
heads, losses and the order classifier see one embedding per clip as they see one per frame.

Heads (REFERENCE.md): ``inter`` and ``intra`` embed single frames, ``video`` embeds the mean
of a tuple's frame features, ``order`` embeds every frame of a tuple; each is
Linear(F, F) -> ReLU -> Linear(F, 128) with L2-normalised output. The order classifier is
Linear(6 * 128, 4) over the query tuple's and the key tuple's order embeddings.

The online and the key (EMA) encoder are two instances of this module with the same
parameter tree; they differ only in how BatchNorm gathers its statistics.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vclr_jax.models import resnet
from vclr_jax.models import video3d
from vclr_jax.models import vit
from vclr_jax.models.resnet import accumulation_dtype

HEADS = ('inter', 'intra', 'video', 'order')
NUM_ORDER_CLASSES = 4
ORDER_NORMS = ('per_frame', 'over_frames')
ARCHITECTURES = ('resnet',) + tuple(video3d.ARCHITECTURES) + tuple(vit.ARCHITECTURES)


def has_batch_norm(architecture: str) -> bool:
  """Whether the backbone normalises with BatchNorm (every one but the ViTs)."""
  return architecture not in vit.ARCHITECTURES


def vit_spec(model_config) -> vit.ViTSpec | None:
  """The ViT size config.model describes (its vit_* overrides applied), None for other
  backbones. Configs without the vit_* keys get the architecture's own size."""
  architecture = model_config.get('architecture', 'resnet')
  if architecture not in vit.ARCHITECTURES:
    return None
  return vit.spec(architecture, model_config.get('vit_width', 0),
                  model_config.get('vit_depth', 0), model_config.get('vit_heads', 0),
                  model_config.get('vit_pool', 'token'))


def backbone_feature_dim(architecture: str, depth: int, width_multiplier: float,
                         vit_size: vit.ViTSpec | None = None) -> int:
  """Size of the pooled backbone feature: a ResNet's of ``depth``, the 3D network's, or the
  ViT's width (``vit_size``, default the architecture's own)."""
  if architecture == 'resnet':
    return resnet.feature_dim(depth, width_multiplier)
  if architecture in vit.ARCHITECTURES:
    return (vit_size or vit.spec(architecture)).width
  return video3d.feature_dim(architecture, width_multiplier)


def make_backbone(architecture: str, depth: int, width_multiplier: float, bn_groups: int = 1,
                  bn_axis_name: str | None = None, dtype: Any = jnp.float32,
                  name: str | None = None, vit_size: vit.ViTSpec | None = None) -> nn.Module:
  """The ResNet of ``depth`` or the ViT ``vit_size`` (default the architecture's own) on
  frames, or the 3D network ``architecture`` on clips."""
  if architecture == 'resnet':
    return resnet.ResNet(depth, width_multiplier, bn_groups, bn_axis_name, dtype, name=name)
  if architecture in vit.ARCHITECTURES:
    return vit.VisionTransformer(vit_size or vit.spec(architecture), dtype, name=name)
  return video3d.video_backbone(architecture, width_multiplier, bn_groups, bn_axis_name, dtype,
                                name=name)


class TorchLinear(nn.Module):
  """torch.nn.Linear with its default init: U(+-1/sqrt(fan_in)) for weight and bias."""
  features: int

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    bound = 1.0 / jnp.sqrt(fan_in)
    uniform = lambda key, shape, dtype=jnp.float32: nn.initializers.uniform(2 * bound)(
        key, shape, dtype) - bound
    kernel = self.param('kernel', uniform, (fan_in, self.features), jnp.float32)
    bias = self.param('bias', uniform, (self.features,), jnp.float32)
    return x.astype(accumulation_dtype(x.dtype)) @ kernel + bias


def l2_normalize(x, axis=-1, eps=1e-12):
  """torch.nn.functional.normalize: x / max(||x||, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


class ProjectionHead(nn.Module):
  """Linear(F, F) -> ReLU -> Linear(F, embed_dim); names follow torch's Sequential (fc0, fc2)."""
  hidden: int
  embed_dim: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(TorchLinear(self.hidden, name='fc0')(x))
    return TorchLinear(self.embed_dim, name='fc2')(x)


class VCLR(nn.Module):
  """Backbone + heads. Methods give the pieces the train step combines.

  Attributes:
    architecture: 'resnet' or a ViT ('vit_ti16', 'vit_s16', 'vit_b16') on frames, or a 3D
      backbone on clips, 'r3d_18' or 's3d'.
    depth, width_multiplier: backbone size (see ResNet; a 3D backbone ignores depth, a ViT both).
    vit_size: a ViT's size (models/vit.py ViTSpec); None: the architecture's own.
    embed_dim: size of every head's output (128).
    order_norm: 'per_frame' normalises each frame's order embedding (the paper);
      'over_frames' normalises over the tuple's frame axis as the released code does.
    bn_groups, bn_axis_name, dtype: passed to the backbone's BatchNorm and convs.
  """
  architecture: str = 'resnet'
  depth: int = 50
  width_multiplier: float = 1.0
  embed_dim: int = 128
  order_norm: str = 'per_frame'
  bn_groups: int = 1
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  vit_size: vit.ViTSpec | None = None

  def setup(self):
    if self.order_norm not in ORDER_NORMS:
      raise ValueError(f'model.order_norm must be one of {ORDER_NORMS}, got {self.order_norm!r}.')
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f'model.architecture must be one of {ARCHITECTURES}, got '
                       f'{self.architecture!r}.')
    self.backbone = make_backbone(self.architecture, self.depth, self.width_multiplier,
                                  self.bn_groups, self.bn_axis_name, self.dtype,
                                  vit_size=self.vit_size)
    hidden = backbone_feature_dim(self.architecture, self.depth, self.width_multiplier,
                                  self.vit_size)
    self.heads = {name: ProjectionHead(hidden, self.embed_dim, name=f'{name}_head')
                  for name in HEADS}
    self.order_classifier = TorchLinear(NUM_ORDER_CLASSES, name='order_classifier')

  def features(self, frames, train: bool = True):
    """Pooled backbone features of (N, H, W, 3) frames or (N, L, H, W, 3) clips: (N, F)."""
    return self.backbone(frames, train)

  def frame_embeddings(self, features):
    """Normalised inter- and intra-frame embeddings of (N, F) frame features."""
    return {name: l2_normalize(self.heads[name](features)) for name in ('inter', 'intra')}

  def video_embedding(self, tuple_features):
    """Normalised video embedding of (B, T, F) tuple features: head on the frame mean."""
    return l2_normalize(self.heads['video'](tuple_features.mean(axis=1)))

  def order_embeddings(self, tuple_features):
    """(B, T, embed_dim) order embeddings, normalised as ``order_norm`` says."""
    embeddings = self.heads['order'](tuple_features)
    return l2_normalize(embeddings, axis=-1 if self.order_norm == 'per_frame' else 1)

  def order_logits(self, query_order, key_order):
    """4-way logits from (B, T, D) query and key order embeddings, each already in shown order."""
    b = query_order.shape[0]
    return self.order_classifier(
        jnp.concatenate([query_order.reshape(b, -1), key_order.reshape(b, -1)], axis=-1))

  def __call__(self, frames, train: bool = True):
    """Runs every piece once on (B, T, H, W, 3) tuples (clips: (B, T, L, H, W, 3)); used to
    initialise all parameters."""
    b, t = frames.shape[:2]
    feats = self.features(frames.reshape((b * t,) + frames.shape[2:]), train)
    frame = self.frame_embeddings(feats)
    tuple_features = feats.reshape(b, t, -1)
    order = self.order_embeddings(tuple_features)
    return dict(frame, video=self.video_embedding(tuple_features),
                order_logits=self.order_logits(order, order))
