"""Names and array layouts between this project's Flax variables and PyTorch state dicts.

Pure numpy (no torch import), so the trainer can use it without PyTorch installed.

The *canonical* PyTorch names used throughout ``vclr_jax.interop`` are the ones of the
reference (released) VCLR model without its DistributedDataParallel ``module.`` prefix: the
reference model is a torchvision ResNet with extra heads attached, so its backbone keys are
torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``, ``layer1.0.downsample.0.weight``)
and its heads are ``fc_inter``, ``fc_intra``, ``fc_tsn`` (our ``video`` head), ``fc_order``
(each a Sequential: ``.0`` Linear, ``.2`` Linear) and ``fc_order_classifier``.

The 3D backbones (``vclr_jax.models.video3d``) are torchvision's ``r3d_18`` and ``s3d``, whose
backbone keys (``stem.0.weight``, ``layer1.0.conv1.1.running_mean``,
``features.5.branch1.1.0.0.weight``) are their Flax module paths with '_' read as '.'.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from vclr_jax.interop import timm_layout
from vclr_jax.models.resnet import STAGE_BLOCKS

# Our head name -> the reference model's attribute (its video head is called tsn).
HEAD_MODULES = {'inter': 'fc_inter', 'intra': 'fc_intra', 'video': 'fc_tsn', 'order': 'fc_order'}
ORDER_CLASSIFIER_MODULE = 'fc_order_classifier'

# Flax leaf name -> torch parameter/buffer name, per variable collection.
_LEAF_NAMES = {
    'params': {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'},
    'batch_stats': {'mean': 'running_mean', 'var': 'running_var'},
}
# Flax module names that are not torch's with '.' written '_' (ResNet's and the heads').
_SUBMODULE_NAMES = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1',
                    'fc0': '0', 'fc2': '2'}

# torch's BatchNorm keeps a step counter that flax does not; it only matters for momentum=None.
BN_COUNTER = 'num_batches_tracked'


def torch_name(flax_path: tuple[str, ...]) -> str:
  """Canonical torch name of a VCLR variable, e.g. ('params', 'backbone', 'layer1_0', 'bn1',
  'scale') -> 'layer1.0.bn1.weight', ('params', 'video_head', 'fc0', 'kernel') -> 'fc_tsn.0.weight',
  ('batch_stats', 'backbone', 'layer1_0', 'conv1_1', 'mean') -> 'layer1.0.conv1.1.running_mean'.
  """
  if timm_layout.is_vit_path(flax_path):
    return timm_layout.timm_name(flax_path)
  collection, top, *modules, leaf = flax_path
  if collection not in _LEAF_NAMES or leaf not in _LEAF_NAMES[collection]:
    raise ValueError(f'No PyTorch name for variable {"/".join(flax_path)}.')
  if top == 'backbone':
    parts = []
  elif top.endswith('_head') and top[:-len('_head')] in HEAD_MODULES:
    parts = [HEAD_MODULES[top[:-len('_head')]]]
  elif top == 'order_classifier':
    parts = [ORDER_CLASSIFIER_MODULE]
  else:
    raise ValueError(f'No PyTorch name for variable {"/".join(flax_path)}.')
  parts += [_SUBMODULE_NAMES.get(module, module.replace('_', '.')) for module in modules]
  return '.'.join(parts + [_LEAF_NAMES[collection][leaf]])


def _torch_axes(flax_path: tuple[str, ...], ndim: int) -> tuple[int, ...] | None:
  """Axis order that turns a flax array into torch's layout, None where they agree."""
  if flax_path[-1] != 'kernel':
    return None
  # Conv THWIO -> OITHW, HWIO -> OIHW, Dense (in, out) -> (out, in).
  return {5: (4, 3, 0, 1, 2), 4: (3, 2, 0, 1), 2: (1, 0)}.get(ndim)


def torch_shape(flax_path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """Shape the torch tensor of a flax variable of this shape has."""
  axes = _torch_axes(flax_path, len(shape))
  return tuple(shape) if axes is None else tuple(shape[axis] for axis in axes)


def to_torch_array(flax_path: tuple[str, ...], value) -> np.ndarray:
  """Flax array -> the same values in torch's layout."""
  value = np.asarray(value)
  axes = _torch_axes(flax_path, value.ndim)
  return value if axes is None else np.ascontiguousarray(value.transpose(axes))


def from_torch_array(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """Inverse of ``to_torch_array``."""
  axes = _torch_axes(flax_path, value.ndim)
  return value if axes is None else np.ascontiguousarray(value.transpose(np.argsort(axes)))


def flatten_variables(variables: Mapping) -> dict[tuple[str, ...], object]:
  """{'params': ..., 'batch_stats': ...} -> {flax path: leaf}, collections included in the path."""
  return traverse_util.flatten_dict(
      {collection: variables[collection] for collection in ('params', 'batch_stats')
       if collection in variables})


_BLOCK_MODULE_ORDER = ('conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'downsample.0',
                       'downsample.1')
_TENSOR_ORDER = ('weight', 'bias', 'running_mean', 'running_var', BN_COUNTER)


def _torchvision_key_order(name: str) -> tuple[int, int, int, int]:
  """Sort key giving torchvision's ResNet state_dict order (some scripts pair keys by
  position)."""
  *modules, leaf = name.split('.')
  if modules[0].startswith('layer'):
    stage, block, submodule = int(modules[0][len('layer'):]), int(modules[1]), modules[2:]
  else:
    stage, block, submodule = 0, 0, modules
  return stage, block, _BLOCK_MODULE_ORDER.index('.'.join(submodule)), _TENSOR_ORDER.index(leaf)


def _torchvision_video_key_order(name: str) -> tuple:
  """Sort key giving torchvision's r3d_18 / s3d state_dict order: their modules are defined in
  the natural order of their dotted paths (numbers as numbers), except r3d's stem, which
  precedes its layers."""
  *modules, leaf = name.split('.')
  # Within one Sequential every child is a number, elsewhere every child a name, so the two
  # kinds of segment never meet at one position.
  segments = tuple((int(m), '') if m.isdigit() else (-1, m) for m in modules)
  return modules[0] != 'stem', segments, _TENSOR_ORDER.index(leaf)


def backbone_state_dict(variables: Mapping) -> dict[str, np.ndarray]:
  """torchvision state dict of a VCLR backbone: ``resnet*`` without the classifier ``fc``,
  ``r3d_18`` without ``fc`` or ``s3d`` without ``classifier``; for a ViT, timm's
  ``vit_*_patch16_224`` without ``head`` (timm_layout).

  Keys come in torchvision's order. BatchNorm's ``num_batches_tracked`` counters are included
  (as 0) so that torchvision loads the result with ``strict=True`` once its classifier is
  replaced by ``torch.nn.Identity()``.
  """
  state = {}
  for path, value in flatten_variables(variables).items():
    if path[1] != 'backbone':
      continue
    name = torch_name(path)
    state[name] = to_torch_array(path, value)
    if name.endswith('.running_mean'):
      state[name[:-len('running_mean')] + BN_COUNTER] = np.zeros((), np.int64)
  # The 2D ResNet's stem is conv1; the 3D networks' are stem.* and features.0.*; a ViT's
  # (timm's layout) patch_embed.proj.
  if 'conv1.weight' in state:
    key = _torchvision_key_order
  elif 'cls_token' in state:
    key = timm_layout.timm_key_order
  else:
    key = _torchvision_video_key_order
  return {name: state[name] for name in sorted(state, key=key)}


def mmaction2_name(torchvision_name: str) -> str:
  """torchvision backbone key -> mmaction2 ``ResNet`` key (its ConvModule wraps conv + bn).

  conv1.weight -> conv1.conv.weight, bn1.* -> conv1.bn.*, layer1.0.bn2.* -> layer1.0.conv2.bn.*,
  layer1.0.downsample.0.* -> layer1.0.downsample.conv.*, downsample.1.* -> downsample.bn.*.
  """
  *modules, leaf = torchvision_name.split('.')
  last = modules[-1]
  if last.startswith('conv'):
    modules[-1:] = [last, 'conv']
  elif last.startswith('bn'):
    modules[-1:] = ['conv' + last[len('bn'):], 'bn']
  elif modules[-2:] == ['downsample', '0']:
    modules[-1] = 'conv'
  elif modules[-2:] == ['downsample', '1']:
    modules[-1] = 'bn'
  else:
    raise ValueError(f'{torchvision_name!r} is not a torchvision ResNet backbone key.')
  return '.'.join(modules + [leaf])


def torchvision_name_from_mmaction2(mmaction2_key: str) -> str:
  """Inverse of ``mmaction2_name`` (without the ``backbone.`` prefix); also reads TSM's keys,
  whose temporal shift wraps a conv as ``conv1.conv.net.weight``."""
  *modules, leaf = mmaction2_key.split('.')
  if modules[-2:] == ['conv', 'net']:
    modules.pop()
  if modules[-2:] == ['downsample', 'conv']:
    modules[-1] = '0'
  elif modules[-2:] == ['downsample', 'bn']:
    modules[-1] = '1'
  elif len(modules) >= 2 and modules[-2].startswith('conv') and modules[-1] in ('conv', 'bn'):
    conv = modules[-2]
    modules[-2:] = [conv if modules[-1] == 'conv' else 'bn' + conv[len('conv'):]]
  else:
    raise ValueError(f'{mmaction2_key!r} is not an mmaction2 ResNet backbone key.')
  return '.'.join(modules + [leaf])


def infer_architecture(tensors: Mapping[str, np.ndarray]) -> tuple[int, float]:
  """(depth, width_multiplier) of a torchvision-named ResNet backbone from its keys and shapes."""
  if 'conv1.weight' not in tensors:
    raise ValueError('Cannot infer the ResNet size: the weights have no backbone key '
                     "'conv1.weight'. Pass the depth and width explicitly.")
  width_multiplier = tensors['conv1.weight'].shape[0] / 64
  bottleneck = 'layer1.0.conv3.weight' in tensors
  blocks = tuple(len({k.split('.')[1] for k in tensors if k.startswith(f'layer{stage}.')})
                 for stage in range(1, 5))
  for depth, stage_blocks in STAGE_BLOCKS.items():
    if stage_blocks == blocks and bottleneck == (depth == 50):
      return depth, width_multiplier
  raise ValueError(f'The weights hold a ResNet with {blocks} blocks per stage '
                   f'({"bottleneck" if bottleneck else "basic"} blocks); supported: '
                   'ResNet-10/18/34/50.')
