"""Fills a VCLR variable template from a PyTorch weight file (``init_from`` for .pth etc.)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from vclr_jax.interop.checkpoint_layouts import TorchWeights, read_torch_weights
from vclr_jax.interop.torch_layout import (flatten_variables, from_torch_array, torch_name,
                                           torch_shape)

_LAYOUT_DESCRIPTIONS = {
    'torchvision': 'torchvision ResNet, r3d_18 or s3d state dict',
    'moco': 'MoCo checkpoint (query encoder; its projection head copied into all four heads)',
    'vclr_reference': 'reference VCLR checkpoint',
    'mmaction2': 'mmaction2 checkpoint (backbone only)',
    'timm': 'timm / DeiT ViT state dict',
    'mocov3': 'MoCo v3 ViT checkpoint (base encoder, without its projection head)',
}


@dataclasses.dataclass
class LoadReport:
  """What a load took from the file and what it left alone.

  Attributes:
    weights: the file's tensors (with its layout and deliberately ignored keys).
    loaded: for every variable filled, the file key it came from.
    missing: flax paths of the variables the file has no tensor for (kept from the template).
    unexpected: file keys that match no variable of the model (not loaded).
  """
  weights: TorchWeights
  loaded: list[str]
  missing: list[tuple[str, ...]]
  unexpected: list[str]

  def summary(self) -> str:
    w = self.weights
    lines = [f'Filled {len(self.loaded)} variables from {w.path} '
             f'({_LAYOUT_DESCRIPTIONS[w.layout]}).']
    if self.missing:
      lines.append(f'  Not in the file, kept as initialised ({len(self.missing)}):')
      lines += [f'    {"/".join(path)} (PyTorch name {torch_name(path)})' for path in self.missing]
    if self.unexpected:
      lines.append(f'  Not loaded, unknown to VCLR ({len(self.unexpected)} unexpected keys):')
      lines += [f'    {key}' for key in self.unexpected]
    for reason, keys in w.ignored.items():
      shown = ', '.join(keys[:3]) + (', ...' if len(keys) > 3 else '')
      lines.append(f'  Ignored as expected: {reason} ({len(keys)} keys: {shown}).')
    return '\n'.join(lines)


def fill_variables(weights: TorchWeights, template: Mapping) -> tuple[dict, LoadReport]:
  """Returns (template with every variable the file has replaced by it, report).

  The template's leaves need only a shape and dtype (arrays or jax.ShapeDtypeStruct); the
  ones the file lacks are returned as they are.

  Raises:
    ValueError: naming the file key, if a tensor's shape differs from the model's, or if the
      file holds no backbone weight at all.
  """
  flat_template = flatten_variables(template)
  filled, loaded, missing = {}, [], []
  loaded_backbone = False
  for path, leaf in flat_template.items():
    name = torch_name(path)
    if name not in weights.tensors:
      missing.append(path)
      filled[path] = leaf
      continue
    source = weights.sources[name]
    value = weights.tensors[name]
    expected = torch_shape(path, np.shape(leaf))
    if name == 'pos_embed' and value.shape != expected and value.shape[2:] == expected[2:]:
      value = _resampled_position_embedding(value, expected)
    if value.shape != expected:
      raise ValueError(
          f'{weights.path}: {source!r} has shape {tuple(value.shape)} but the model\'s '
          f'{"/".join(path)} needs {expected}. The file holds a different network: set '
          'config.model.depth / width_multiplier to the file\'s (for the converter: --depth / '
          '--width_multiplier, or leave them out to infer them); for a ViT, '
          'config.model.architecture or vit_width / vit_depth.')
    filled[path] = from_torch_array(path, value).astype(leaf.dtype, copy=False)
    loaded.append(source)
    loaded_backbone = loaded_backbone or path[1] == 'backbone'
  if not loaded_backbone:
    raise ValueError(f'{weights.path}: none of its {len(weights.tensors)} tensors is a weight of '
                     'the ResNet, 3D or ViT backbone (first keys: '
                     f'{list(weights.sources.values())[:5]}). Expected torchvision, MoCo, '
                     'reference VCLR or mmaction2 key names (timm, DeiT or MoCo v3 for a ViT), '
                     'matching config.model.architecture; see docs/interop.md.')
  used = {torch_name(path) for path in flat_template}
  unexpected = [weights.sources[name] for name in weights.tensors if name not in used]
  variables = dict(template)
  variables.update(traverse_util.unflatten_dict(filled))
  return variables, LoadReport(weights, loaded, missing, unexpected)


def _resampled_position_embedding(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A ViT position embedding of another square grid (a checkpoint trained at another frame
  size) resampled to ``shape``, as timm's checkpoint loading does."""
  from vclr_jax.models.vit import resample_position_embedding
  grid = int(round((shape[1] - 1) ** 0.5))
  return np.asarray(resample_position_embedding(value, (grid, grid)))


def load_pytorch_variables(path: str, template: Mapping) -> dict:
  """Variables of a VCLR model filled from a PyTorch weight file; prints what it did.

  Args:
    path: a .pth/.pt/.tar (torch.load) or .safetensors file in one of the layouts listed in
      ``vclr_jax.interop.checkpoint_layouts`` (torchvision, MoCo, reference VCLR, mmaction2).
    template: {'params': ..., 'batch_stats': ...} of the VCLR model to fill (arrays, e.g. a
      fresh ``VCLR(...).init``); variables the file lacks (the heads of a torchvision file,
      say) are kept from it and listed.

  Returns:
    A dict of the template's structure: numpy arrays of the template's dtypes where the file
    had the variable, the template's own leaves elsewhere.
  """
  variables, report = fill_variables(read_torch_weights(path), template)
  print(report.summary())
  return variables
