"""Writes the online encoder's backbone as torchvision, timm, mmaction2 or safetensors weights.

Every export records the input the weights expect (ImageNet mean/std on RGB frames scaled to
[0, 1]) and where they came from: inside the file for mmaction2 (``meta``) and safetensors
(header metadata), in a ``<out>.json`` beside a torchvision file (which stays a plain
state dict that ``load_state_dict`` takes as is). A ViT backbone is written as timm's
VisionTransformer state dict ('timm', or 'safetensors' with the same keys).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping

import numpy as np
from etils import epath

from vclr_jax.augment import IMAGENET_MEAN, IMAGENET_STD
from vclr_jax.interop.torch_layout import backbone_state_dict, mmaction2_name
from vclr_jax.models import resnet, video3d, vit

FORMATS = ('torchvision', 'timm', 'mmaction2', 'safetensors')


def vit_metadata(architecture: str, vit_size: vit.ViTSpec, **common) -> dict:
  """export_metadata for a ViT backbone: timm's model name and the keyword arguments that give
  timm.create_model the exported network (``num_classes=0`` drops the classifier)."""
  timm_kwargs = dict(num_classes=0, embed_dim=vit_size.width, depth=vit_size.depth,
                     num_heads=vit_size.num_heads, global_pool=vit_size.pool)
  return dict(
      common, exported_by='vclr_jax', encoder=(
          'online (query) encoder backbone: the class token after the final norm' if
          vit_size.pool == 'token' else
          'online (query) encoder backbone: the mean patch token, then fc_norm'),
      architecture=architecture, depth=None, feature_dim=vit_size.width,
      timm_model=vit.TIMM_NAMES[architecture], timm_kwargs=timm_kwargs,
      input_channels='RGB', input_scale='pixel / 255, i.e. [0, 1], before mean/std',
      input_mean=list(IMAGENET_MEAN), input_std=list(IMAGENET_STD),
      input_layout='NCHW float32')


def export_metadata(*, width_multiplier: float, step: int | None, source: str,
                    depth: int | None = None, architecture: str | None = None,
                    vit_size: vit.ViTSpec | None = None) -> dict:
  """What a user of the exported weights needs to know, as a flat JSON-able dict.

  The backbone is a 2D ResNet of ``depth`` (architecture 'resnet<depth>') or, given
  ``architecture`` instead, a 3D one of ``video3d.ARCHITECTURES`` ('r3d_18', 's3d'; depth null)
  or a ViT of ``vit.ARCHITECTURES`` of size ``vit_size`` (default the architecture's own).
  """
  if (depth is None) == (architecture is None):
    raise ValueError('export_metadata: give either depth (a 2D ResNet) or architecture (a 3D '
                     f'backbone or a ViT), got depth={depth!r}, architecture={architecture!r}.')
  if architecture in vit.ARCHITECTURES:
    return vit_metadata(architecture, vit_size or vit.spec(architecture), step=step,
                        source=source)
  video = architecture is not None
  return {
      'exported_by': 'vclr_jax',
      'encoder': 'online (query) encoder backbone, globally average-pooled features',
      'architecture': architecture if video else f'resnet{depth}',
      'depth': depth,
      'width_multiplier': width_multiplier,
      'feature_dim': (video3d.feature_dim(architecture, width_multiplier) if video else
                      resnet.feature_dim(depth, width_multiplier)),
      'step': step,
      'source': source,
      'input_channels': 'RGB',
      'input_scale': 'pixel / 255, i.e. [0, 1], before mean/std',
      'input_mean': list(IMAGENET_MEAN),  # RGB in [0, 1], as REFERENCE.md
      'input_std': list(IMAGENET_STD),
      'input_layout': 'NCTHW float32' if video else 'NCHW float32',
  }


def metadata_path(torchvision_out: str) -> str:
  """Where the metadata of a torchvision export lives."""
  return torchvision_out + '.json'


def export_encoder(variables: Mapping, out: str, fmt: str, metadata: Mapping) -> list[str]:
  """Writes the backbone of VCLR ``variables`` to ``out`` in format ``fmt``; returns the files.

  Args:
    variables: {'params': ..., 'batch_stats': ...} of a VCLR model (its 'backbone' is written).
    out: the file to write; its folder is created.
    fmt: one of FORMATS.
    metadata: see ``export_metadata``.
  """
  if fmt not in FORMATS:
    raise ValueError(f'--format must be one of {FORMATS}, got {fmt!r}.')
  is_vit = metadata.get('architecture') in vit.ARCHITECTURES
  if is_vit and fmt in ('torchvision', 'mmaction2'):
    raise ValueError(f'--format={fmt} holds ResNets; export the {metadata["architecture"]} '
                     'backbone as --format=timm (or safetensors, with the same keys).')
  if fmt == 'timm' and not is_vit:
    raise ValueError(f'--format=timm is for ViT backbones; export the '
                     f'{metadata.get("architecture", "ResNet")} backbone as '
                     '--format=torchvision.')
  if fmt == 'mmaction2' and metadata['architecture'] in video3d.ARCHITECTURES:
    # mmaction2's 3D backbones are networks of their own (ResNet3d's stem, pooling and
    # strides follow its config), not torchvision's r3d_18 / s3d under other names; no mapping
    # to them is written or verified.
    raise ValueError(f'--format=mmaction2 is for 2D ResNets; export the '
                     f'{metadata["architecture"]} backbone as torchvision or safetensors.')
  state = backbone_state_dict(variables)
  epath.Path(out).parent.mkdir(parents=True, exist_ok=True)
  metadata = dict(metadata, key_layout=fmt)
  if fmt == 'safetensors':
    import safetensors.numpy
    # safetensors metadata values must be strings.
    epath.Path(out).write_bytes(safetensors.numpy.save(
        state, metadata={k: json.dumps(v) for k, v in metadata.items()}))
    return [out]

  import torch
  tensors = {name: torch.from_numpy(np.array(value)) for name, value in state.items()}
  if fmt in ('torchvision', 'timm'):
    contents = tensors
    epath.Path(metadata_path(out)).write_text(json.dumps(metadata, indent=2))
  else:
    # mmaction2 loads {'state_dict', 'meta'} checkpoints; its ResNet names conv+bn pairs
    # ConvModules.
    contents = {'state_dict': {'backbone.' + mmaction2_name(name): value
                               for name, value in tensors.items()}, 'meta': metadata}
  buffer = io.BytesIO()  # TensorFlow's gs:// writer takes bytes, not torch's memoryviews
  torch.save(contents, buffer)
  epath.Path(out).write_bytes(buffer.getvalue())
  return [out, metadata_path(out)] if fmt in ('torchvision', 'timm') else [out]
