"""Vision Transformers (ViT-Ti/S/B with 16 px patches) in Flax Linen with timm's exact layout.

Each network is timm's ``vit_{tiny,small,base}_patch16_224`` without its classifier, so weights
map one to one (``vclr_jax.interop.timm_layout``): a 16x16/16 patch-embedding convolution with
bias, a class token, a learned position embedding of 1 + 14 x 14 tokens (224 px) that includes
the class token's position, pre-norm blocks (LayerNorm eps 1e-6 -> multi-head attention with a
qkv bias -> residual; LayerNorm -> MLP of 4x width with exact GELU -> residual), and a final
LayerNorm. Module names are timm's state_dict keys with '.' written '_' only in ``blocks_<i>``
(``blocks.<i>``); every other name is timm's own.

The pooled feature is, as timm's ``global_pool``:
- 'token': the class token after the final ``norm``;
- 'avg': the mean of the patch tokens (the class token left out), then ``fc_norm``; the
  blocks' output is not normalised before the mean (timm's ``norm`` is Identity then).

Other frame sizes: the position embedding stays a 14 x 14 grid (so checkpoints are timm's at any
training size) and the patch positions are resampled to the input's grid in every forward pass,
as timm's ``dynamic_img_size`` and its checkpoint loading do: bicubic with antialiasing
(``torch.nn.functional.interpolate(mode='bicubic', antialias=True)``, which
``jax.image.resize`` matches), the class token's position kept.

Initialisation is timm's default: Linear weights N(0, 0.02) (timm's trunc_normal_ cuts at +-2
absolute, 100 standard deviations), biases 0; position embedding N(0, 0.02); class token
N(0, 1e-6); the patch convolution keeps torch's default U(+-1/sqrt(fan_in)).

The network has no BatchNorm, so it creates no 'batch_stats' and the train step's BatchNorm
settings (shuffle-BN, SyncBN, 'reference' BN batching) do not apply to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vclr_jax.models.resnet import accumulation_dtype

PATCH_SIZE = 16
# The grid of timm's *_patch16_224 position embedding: the parameter's shape at every frame size.
NOMINAL_IMAGE_SIZE = 224
MLP_RATIO = 4
LAYER_NORM_EPSILON = 1e-6
POOLS = ('token', 'avg')


@dataclasses.dataclass(frozen=True)
class ViTSpec:
  """A ViT's size: token width, number of blocks, attention heads, and the feature pooling."""
  width: int
  depth: int
  num_heads: int
  pool: str = 'token'


# timm's vit_tiny/small/base_patch16_224.
ARCHITECTURES = {
    'vit_ti16': ViTSpec(width=192, depth=12, num_heads=3),
    'vit_s16': ViTSpec(width=384, depth=12, num_heads=6),
    'vit_b16': ViTSpec(width=768, depth=12, num_heads=12),
}
TIMM_NAMES = {'vit_ti16': 'vit_tiny_patch16_224', 'vit_s16': 'vit_small_patch16_224',
              'vit_b16': 'vit_base_patch16_224'}


def spec(architecture: str, width: int = 0, depth: int = 0, num_heads: int = 0,
         pool: str = 'token') -> ViTSpec:
  """The ViTSpec of ``architecture`` with any non-zero override of its width, depth or heads."""
  if architecture not in ARCHITECTURES:
    raise ValueError(f'No ViT {architecture!r}; expected one of {tuple(ARCHITECTURES)}.')
  if pool not in POOLS:
    raise ValueError(f'config.model.vit_pool must be one of {POOLS}, got {pool!r}.')
  base = ARCHITECTURES[architecture]
  result = ViTSpec(width or base.width, depth or base.depth, num_heads or base.num_heads, pool)
  if result.width % result.num_heads:
    raise ValueError(f'config.model.vit_width={result.width} must be a multiple of the '
                     f'{result.num_heads} heads (config.model.vit_heads): change either.')
  return result


def grid_size(image_size: int) -> int:
  """Patches along one side of a square frame (the convolution drops a remainder)."""
  return image_size // PATCH_SIZE


def resample_position_embedding(pos_embed, grid: tuple[int, int]):
  """(1, 1 + G*G, D) position embedding -> (1, 1 + grid[0]*grid[1], D): the patch positions
  resized bicubically (antialiased) from G x G to ``grid``, the class token's position kept."""
  prefix, patches = pos_embed[:, :1], pos_embed[:, 1:]
  old = int(round(patches.shape[1] ** 0.5))
  if (old, old) == tuple(grid):
    return pos_embed
  d = patches.shape[-1]
  resized = jax.image.resize(patches.reshape(1, old, old, d), (1, *grid, d), 'bicubic',
                             antialias=True)
  return jnp.concatenate([prefix, resized.reshape(1, -1, d).astype(pos_embed.dtype)], axis=1)


linear_init = nn.initializers.normal(0.02)


def dense(features: int, name: str, dtype) -> nn.Dense:
  return nn.Dense(features, kernel_init=linear_init, bias_init=nn.initializers.zeros,
                  dtype=dtype, param_dtype=jnp.float32, name=name)


def layer_norm(name: str, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
  """timm's Attention: one qkv Linear (with bias), softmax(q k^T / sqrt(d)) v per head, proj.

  Sows the attention probabilities (N, heads, tokens, tokens) as 'intermediates'/'attention'
  (kept only when the caller makes 'intermediates' mutable: the pictures).
  """
  num_heads: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    n, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = dense(3 * width, 'qkv', self.dtype)(x).reshape(n, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum('nqhd,nkhd->nhqk', q, k).astype(accumulation_dtype(self.dtype))
    probabilities = jax.nn.softmax(logits * head_dim ** -0.5, axis=-1)
    self.sow('intermediates', 'attention', probabilities)
    out = jnp.einsum('nhqk,nkhd->nqhd', probabilities.astype(self.dtype), v)
    return dense(width, 'proj', self.dtype)(out.reshape(n, tokens, width))


class Mlp(nn.Module):
  hidden: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.gelu(dense(self.hidden, 'fc1', self.dtype)(x), approximate=False)
    return dense(width, 'fc2', self.dtype)(x)


class Block(nn.Module):
  """timm's pre-norm Block (no LayerScale, no drop-path)."""
  num_heads: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    x = x + Attention(self.num_heads, self.dtype, name='attn')(layer_norm('norm1', self.dtype)(x))
    hidden = MLP_RATIO * x.shape[-1]
    return x + Mlp(hidden, self.dtype, name='mlp')(layer_norm('norm2', self.dtype)(x))


class PatchEmbed(nn.Module):
  width: int
  dtype: Any

  @nn.compact
  def __call__(self, frames):
    # torch's Conv2d default init, U(+-1/sqrt(fan_in)) for weight and bias.
    fan_in = PATCH_SIZE * PATCH_SIZE * frames.shape[-1]
    bound = fan_in ** -0.5
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound)
    return nn.Conv(self.width, (PATCH_SIZE, PATCH_SIZE), (PATCH_SIZE, PATCH_SIZE),
                   padding='VALID', kernel_init=uniform, bias_init=uniform, dtype=self.dtype,
                   param_dtype=jnp.float32, name='proj')(frames)


class VisionTransformer(nn.Module):
  """ViT backbone: NHWC frames in, pooled (N, width) features out (no classifier).

  ``train`` is accepted for the interface the other backbones share; the network has no
  dropout or BatchNorm, so it computes the same either way.
  """
  spec: ViTSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, frames, train: bool = True):
    del train
    width = self.spec.width
    tokens = PatchEmbed(width, self.dtype, name='patch_embed')(frames.astype(self.dtype))
    n, rows, cols, _ = tokens.shape
    cls_token = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, width), jnp.float32)
    nominal = grid_size(NOMINAL_IMAGE_SIZE)
    pos_embed = self.param('pos_embed', linear_init, (1, 1 + nominal * nominal, width),
                           jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls_token, (n, 1, width)).astype(self.dtype),
                         tokens.reshape(n, rows * cols, width)], axis=1)
    x = x + resample_position_embedding(pos_embed, (rows, cols)).astype(self.dtype)
    for index in range(self.spec.depth):
      x = Block(self.spec.num_heads, self.dtype, name=f'blocks_{index}')(x)
    if self.spec.pool == 'token':
      pooled = layer_norm('norm', self.dtype)(x)[:, 0]
    else:
      pooled = layer_norm('fc_norm', self.dtype)(x[:, 1:].mean(axis=1))
    return pooled.astype(accumulation_dtype(self.dtype))


def forward_flops(vit_spec: ViTSpec, image_size: int) -> tuple[float, float]:
  """2 x multiply-adds of one forward pass over a square frame, and of its patch projection
  alone (whose input, the data, needs no gradient): the patch convolution, every block's
  qkv/proj/MLP matmuls and its two attention matmuls. LayerNorms, softmax, GELU and the
  position resampling are left out, as in timm's and the MoCo v3 paper's GMAC counts."""
  d, patches = vit_spec.width, grid_size(image_size) ** 2
  tokens = patches + 1
  patch_flops = 2 * patches * PATCH_SIZE * PATCH_SIZE * 3 * d
  block_flops = 2 * (tokens * (3 * d * d + d * d + 2 * MLP_RATIO * d * d) + 2 * tokens**2 * d)
  return float(patch_flops + vit_spec.depth * block_flops), float(patch_flops)
