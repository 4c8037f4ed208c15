"""Names and key order between a VCLR ViT backbone (models/vit.py) and timm's VisionTransformer.

Pure Python (no torch import). timm's ``vit_*_patch16_224`` state dict, without its classifier
``head``, holds (``D`` the width, ``i`` a block):

  cls_token (1, 1, D), pos_embed (1, 197, D),
  patch_embed.proj.weight (D, 3, 16, 16), patch_embed.proj.bias,
  blocks.i.norm1.{weight,bias}, blocks.i.attn.qkv.{weight (3D, D), bias},
  blocks.i.attn.proj.{weight,bias}, blocks.i.norm2.{weight,bias},
  blocks.i.mlp.fc1.{weight (4D, D), bias}, blocks.i.mlp.fc2.{weight,bias},
  norm.{weight,bias} (pool 'token'), or fc_norm.{weight,bias} (pool 'avg').

Our Flax paths are the same names with ``blocks_<i>`` for ``blocks.<i>``, ``kernel`` (Dense
(in, out), Conv HWIO) or ``scale`` for ``weight``; ``torch_layout`` transposes the kernels.
"""

from __future__ import annotations

# Our backbone's top-level names, in timm's state_dict order; none is a ResNet's or a 3D
# network's, so they tell a ViT's paths apart.
_TOP_ORDER = ('cls_token', 'pos_embed', 'patch_embed', 'blocks', 'norm', 'fc_norm')
_BLOCK_ORDER = ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2')
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_PARAMETERS = ('cls_token', 'pos_embed')  # leaves that are timm parameters of their own


def is_vit_path(flax_path: tuple[str, ...]) -> bool:
  """Whether a variable path ('params', 'backbone', ...) belongs to a ViT backbone."""
  if len(flax_path) < 3 or flax_path[:2] != ('params', 'backbone'):
    return False
  top = flax_path[2]
  return top in _TOP_ORDER or top.startswith('blocks_')


def timm_name(flax_path: tuple[str, ...]) -> str:
  """timm's key of a ViT backbone variable, e.g. ('params', 'backbone', 'blocks_3', 'attn',
  'qkv', 'kernel') -> 'blocks.3.attn.qkv.weight', ('params', 'backbone', 'pos_embed') ->
  'pos_embed'."""
  *modules, leaf = flax_path[2:]
  if not modules and leaf in _PARAMETERS:
    return leaf
  if leaf not in _LEAF_NAMES:
    raise ValueError(f'No timm name for variable {"/".join(flax_path)}.')
  parts = ['blocks.' + m[len('blocks_'):] if m.startswith('blocks_') else m for m in modules]
  return '.'.join(parts + [_LEAF_NAMES[leaf]])


def timm_key_order(name: str) -> tuple:
  """Sort key giving timm's VisionTransformer state_dict order."""
  parts = name.split('.')
  if parts[0] == 'blocks':
    return (_TOP_ORDER.index('blocks'), int(parts[1]),
            _BLOCK_ORDER.index('.'.join(parts[2:-1])), parts[-1] != 'weight')
  return _TOP_ORDER.index(parts[0]), 0, 0, parts[-1] != 'weight'
