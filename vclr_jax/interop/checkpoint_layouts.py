"""Reads a PyTorch weight file and renames its tensors to the canonical VCLR torch names.

Accepted files (``.pth``/``.pt``/``.tar`` read with ``torch.load``; ``.safetensors`` read
without torch) and how their keys are read; see docs/interop.md for the user-facing table:

- torchvision ``resnet18/34/50`` state dict, bare or as ``{'state_dict': ...}`` (also our
  torchvision and safetensors exports): ``conv1.weight``, ``layer1.0.bn1.running_mean``, ...
  The ImageNet classifier ``fc.weight``/``fc.bias`` is ignored. The same for the 3D backbones'
  torchvision ``r3d_18`` (``stem.0.weight``, ...; ``fc.*`` ignored) and ``s3d``
  (``features.0.0.0.weight``, ...; ``classifier.1.*`` ignored).
- MoCo v1/v2 checkpoint ``{'state_dict': {'module.encoder_q.<torchvision key>', ...}}``: the
  query encoder is read; its MLP projection head ``fc.0``/``fc.2`` is copied into all four VCLR
  heads, as the reference code does when it starts from MoCo. ``module.encoder_k.*`` and the
  queue are ignored.
- reference VCLR checkpoint ``{'model': {'module.conv1.weight', ..., 'module.fc_inter.0.weight',
  'module.fc_intra.*', 'module.fc_tsn.*' (video head), 'module.fc_order.*',
  'module.fc_order_classifier.*'}}`` (the ``module.`` prefix is optional); ``model_ema`` and
  the other entries are ignored.
- mmaction2 checkpoint ``{'state_dict': {'backbone.conv1.conv.weight', ...}}`` (our mmaction2
  export, or a TSN/TSM model with a 2D ResNet backbone); ``cls_head.*`` is ignored.
- timm / DeiT ViT state dict, bare or under 'model' (DeiT's checkpoints) or 'state_dict' (also
  our timm export): ``cls_token``, ``pos_embed``, ``patch_embed.proj.weight``, ``blocks.0...``
  (interop/timm_layout.py); the classifier ``head.*`` (and DeiT's ``head_dist.*``) is ignored.
- MoCo v3 ViT checkpoint ``{'state_dict': {'module.base_encoder.<timm key>', ...}}``: the base
  encoder is read; its projection MLP ``head.*``, ``module.momentum_encoder.*`` and
  ``module.predictor.*`` are ignored. (MoCo v3's ViT-S has 12 heads: set
  config.model.vit_heads=12.)
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping

import numpy as np
from etils import epath

from vclr_jax.interop.torch_layout import (BN_COUNTER, HEAD_MODULES,
                                           torchvision_name_from_mmaction2)

TORCH_SUFFIXES = ('.pth', '.pt', '.tar')
SAFETENSORS_SUFFIX = '.safetensors'

_MOCO_QUERY_PREFIX = 'module.encoder_q.'
_MOCO_V3_PREFIX = 'module.base_encoder.'
_VIT_CLASSIFIERS = ('head.', 'head_dist.')  # timm's classifier, DeiT's distillation head
_MMACTION2_PREFIX = 'backbone.'
_MOCO_PROJECTION = ('fc.0.weight', 'fc.0.bias', 'fc.2.weight', 'fc.2.bias')
_TORCHVISION_CLASSIFIER = ('fc.weight', 'fc.bias')
_S3D_CLASSIFIER = ('classifier.1.weight', 'classifier.1.bias')  # classifier.0 is Dropout


@dataclasses.dataclass
class TorchWeights:
  """Tensors of one file under canonical names (see torch_layout), with where each came from.

  Attributes:
    path: the file.
    layout: 'torchvision', 'moco', 'vclr_reference', 'mmaction2', 'timm' or 'mocov3'.
    tensors: canonical name -> array in torch layout.
    sources: canonical name -> the key it was read from in the file.
    ignored: {reason: [file keys]} for keys that are known and deliberately not used.
  """
  path: str
  layout: str
  tensors: dict[str, np.ndarray]
  sources: dict[str, str]
  ignored: dict[str, list[str]]


def read_torch_weights(path: str) -> TorchWeights:
  """Reads ``path`` and recognises its layout; raises ValueError naming the file if unknown."""
  path = os.fspath(path)
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f'PyTorch weight file {path} does not exist.')
  if path.endswith(SAFETENSORS_SUFFIX):
    import safetensors.numpy
    contents = safetensors.numpy.load(epath.Path(path).read_bytes())
  elif path.endswith(TORCH_SUFFIXES):
    contents = _torch_load(path)
  else:
    raise ValueError(f'{path}: expected a {", ".join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))} '
                     'file.')
  return _recognise(path, contents)


def _torch_load(path: str):
  """torch.load with weights_only (never runs pickled code), allowing the reference's args."""
  import argparse

  import torch

  # The reference VCLR checkpoint stores its argparse options under 'opt'.
  with torch.serialization.safe_globals([argparse.Namespace]):
    try:
      data = io.BytesIO(epath.Path(path).read_bytes())  # any filesystem (gs://...)
      return torch.load(data, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises UnpicklingError or RuntimeError here.
      raise ValueError(f'{path}: torch.load(weights_only=True) failed ({error}). If the file '
                       'pickles custom classes, re-save only its state dict: '
                       'torch.save(model.state_dict(), PATH).') from error


def _to_numpy(path: str, key: str, value) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if not hasattr(value, 'detach'):
    raise ValueError(f'{path}: {key!r} is a {type(value).__name__}, not a tensor.')
  import torch
  value = value.detach().cpu()
  # numpy has no bfloat16; float32 holds every bfloat16/float16 value exactly.
  if value.dtype in (torch.bfloat16, torch.float16):
    value = value.float()
  return value.numpy()


def _recognise(path: str, contents) -> TorchWeights:
  if not isinstance(contents, Mapping):
    raise ValueError(f'{path}: expected a dict of tensors, found a {type(contents).__name__}.')
  ignored = {}
  state = _state_dict_of(contents, ignored)
  layout, renamed = _canonical_names(list(state), ignored)
  tensors, sources = {}, {}
  for name, key in renamed.items():
    if name.endswith('.' + BN_COUNTER):
      ignored.setdefault('BatchNorm step counters (flax keeps none)', []).append(key)
    elif layout != 'moco' and name in _TORCHVISION_CLASSIFIER + _S3D_CLASSIFIER:
      ignored.setdefault('torchvision classifier', []).append(key)
    else:
      tensors[name], sources[name] = _to_numpy(path, key, state[key]), key
  if layout == 'moco':
    _copy_moco_projection_to_heads(tensors, sources, ignored)
  return TorchWeights(path, layout, tensors, sources, {k: v for k, v in ignored.items() if v})


def _state_dict_of(contents: Mapping, ignored: dict) -> Mapping:
  """The tensors of a checkpoint: under 'model' (reference), 'state_dict' or at the top."""
  if isinstance(contents.get('model'), Mapping):
    ignored['reference checkpoint entries other than model'] = [
        k for k in contents if k != 'model']
    return contents['model']
  if isinstance(contents.get('state_dict'), Mapping):
    return contents['state_dict']
  return contents


def _canonical_names(keys: list[str], ignored: dict) -> tuple[str, dict[str, str]]:
  """(layout, {canonical name: file key}) for the keys this module reads."""
  if any(k.startswith(_MOCO_V3_PREFIX) for k in keys):
    encoder = {k[len(_MOCO_V3_PREFIX):]: k for k in keys if k.startswith(_MOCO_V3_PREFIX)}
    ignored['MoCo v3 projection head (VCLR has its own heads)'] = [
        k for name, k in encoder.items() if name.startswith('head.')]
    ignored['MoCo v3 momentum encoder and predictor'] = [
        k for k in keys if not k.startswith(_MOCO_V3_PREFIX)]
    return 'mocov3', {name: k for name, k in encoder.items() if not name.startswith('head.')}
  if 'cls_token' in keys or 'module.cls_token' in keys:
    renamed = {k[len('module.'):] if k.startswith('module.') else k: k for k in keys}
    ignored['timm classifier'] = [k for name, k in renamed.items()
                                  if name.startswith(_VIT_CLASSIFIERS)]
    return 'timm', {name: k for name, k in renamed.items()
                    if not name.startswith(_VIT_CLASSIFIERS)}
  if any(k.startswith(_MOCO_QUERY_PREFIX) for k in keys):
    ignored['MoCo key encoder and queue'] = [
        k for k in keys if not k.startswith(_MOCO_QUERY_PREFIX)]
    return 'moco', {k[len(_MOCO_QUERY_PREFIX):]: k for k in keys
                    if k.startswith(_MOCO_QUERY_PREFIX)}
  if any(k.startswith(_MMACTION2_PREFIX) for k in keys):
    renamed = {}
    for k in keys:
      if not k.startswith(_MMACTION2_PREFIX):
        ignored.setdefault('mmaction2 non-backbone keys (cls_head, ...)', []).append(k)
        continue
      try:
        renamed[torchvision_name_from_mmaction2(k[len(_MMACTION2_PREFIX):])] = k
      except ValueError:
        renamed[k] = k  # not a ResNet key: reported as unexpected
    return 'mmaction2', renamed
  renamed = {k[len('module.'):] if k.startswith('module.') else k: k for k in keys}
  has_heads = any(k.startswith(HEAD_MODULES['inter'] + '.') for k in renamed)
  return ('vclr_reference' if has_heads else 'torchvision'), renamed


def _copy_moco_projection_to_heads(tensors, sources, ignored):
  """The reference starts VCLR from MoCo v2 with every head a copy of MoCo's projection head."""
  if all(name in tensors for name in _MOCO_PROJECTION):
    for name in _MOCO_PROJECTION:
      value, key = tensors.pop(name), sources.pop(name)
      for module in HEAD_MODULES.values():
        tensors[f'{module}.{name[len("fc."):]}'] = value
        sources[f'{module}.{name[len("fc."):]}'] = key
  else:
    # MoCo v1 has a single Linear head, which does not fit VCLR's MLP heads.
    linear = [name for name in _TORCHVISION_CLASSIFIER if name in tensors]
    ignored['MoCo linear head (not an MLP projection head)'] = [sources[n] for n in linear]
    for name in linear:
      del tensors[name], sources[name]
