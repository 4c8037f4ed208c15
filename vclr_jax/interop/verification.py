"""Proves an export: torchvision's (timm's for a ViT) network with the exported weights
computes our features.

Both models run in inference mode on the same random frames (2D ResNets, ViTs) or clips
(r3d_18, s3d); the largest absolute difference of the pooled features is returned. torch,
torchvision and timm are imported here only.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Mapping

import jax
import numpy as np
from etils import epath

from vclr_jax.interop.torch_layout import torchvision_name_from_mmaction2
from vclr_jax.interop.torchvision_compat import import_torchvision
from vclr_jax.models.resnet import STAGE_BLOCKS, ResNet
from vclr_jax.models.video3d import scaled, video_backbone
from vclr_jax.models.vit import TIMM_NAMES, VisionTransformer, ViTSpec

# float32 convolutions in two libraries agree to ~1e-6 relative; this leaves margin.
RELATIVE_TOLERANCE = 1e-4


@dataclasses.dataclass
class Verification:
  max_abs_difference: float
  max_abs_feature: float
  image_size: int
  num_frames: int | None = None  # clips of this many frames; None for single frames

  @classmethod
  def of(cls, ours: np.ndarray, theirs: np.ndarray, image_size: int,
         num_frames: int | None = None) -> Verification:
    return cls(float(np.abs(ours - theirs).max()), float(np.abs(ours).max()), image_size,
               num_frames)

  @property
  def inputs(self) -> str:
    """What both models ran on, for messages."""
    if self.num_frames is None:
      return f'{self.image_size}px frames'
    return f'{self.num_frames}-frame {self.image_size}px clips'

  @property
  def tolerance(self) -> float:
    return RELATIVE_TOLERANCE * max(1.0, self.max_abs_feature)

  @property
  def passed(self) -> bool:
    return self.max_abs_difference <= self.tolerance


def torchvision_resnet(depth: int, width_multiplier: float = 1.0):
  """torchvision ``resnet{depth}`` with ``fc = Identity`` (so it returns pooled features);
  ResNet-10 is torchvision's ``ResNet(BasicBlock, [1, 1, 1, 1])``.

  For width_multiplier != 1 the stem and the four stages are rebuilt with torchvision's own
  ``ResNet._make_layer`` at the scaled widths: the same blocks and wiring as our ResNet. (The
  ``width_per_group`` argument is not equivalent: it scales only a bottleneck's inner width,
  not its output or the stem.)
  """
  import torch.nn as nn
  torchvision = import_torchvision()
  resnet = torchvision.models.resnet
  model = resnet.ResNet(resnet.Bottleneck if depth == 50 else resnet.BasicBlock,
                        list(STAGE_BLOCKS[depth]))
  if width_multiplier != 1.0:
    base = int(64 * width_multiplier)
    model.inplanes = base
    model.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(base)
    block = type(model.layer1[0])
    for stage, num_blocks in enumerate(STAGE_BLOCKS[depth]):
      setattr(model, f'layer{stage + 1}', model._make_layer(
          block, base * 2**stage, num_blocks, stride=1 if stage == 0 else 2))
  model.fc = nn.Identity()
  return model


def torchvision_video_model(architecture: str, width_multiplier: float = 1.0):
  """torchvision ``r3d_18()`` or ``s3d()`` returning our pooled features of (N, 3, T, H, W)
  clips: r3d_18's ``fc`` becomes Identity; so do s3d's ``classifier`` and its AvgPool3d(2, 7, 7),
  which leaves its forward's closing mean over (T, H, W) as the global mean of ``features(x)``.

  For width_multiplier != 1 every Conv3d and BatchNorm3d is replaced by one with the channel
  counts scaled as ours (the first conv keeps its 3 input channels) and otherwise torchvision's
  kernel size, stride, padding, eps and momentum: torchvision's wiring at our widths.
  """
  import torch.nn as nn
  video = import_torchvision().models.video
  if architecture == 'r3d_18':
    model = video.r3d_18()
    model.fc = nn.Identity()
  elif architecture == 's3d':
    model = video.s3d()
    model.avgpool = model.classifier = nn.Identity()
  else:
    raise ValueError(f'No torchvision video model {architecture!r}; expected r3d_18 or s3d.')
  if width_multiplier != 1.0:
    narrow = lambda channels: scaled(channels, width_multiplier)
    first_conv = True
    for name, module in list(model.named_modules()):
      if isinstance(module, nn.Conv3d):
        in_channels = module.in_channels if first_conv else narrow(module.in_channels)
        first_conv = False
        model.set_submodule(name, nn.Conv3d(
            in_channels, narrow(module.out_channels), module.kernel_size, module.stride,
            module.padding, bias=module.bias is not None))
      elif isinstance(module, nn.BatchNorm3d):
        model.set_submodule(name, nn.BatchNorm3d(narrow(module.num_features), module.eps,
                                                 module.momentum))
  return model


def read_exported_state_dict(path: str, fmt: str) -> dict:
  """The exported file as a torchvision state dict of torch tensors, read as a user would."""
  import torch
  data = epath.Path(path).read_bytes()  # any filesystem (gs://...)
  if fmt == 'safetensors':
    import safetensors.torch
    return safetensors.torch.load(data)
  contents = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
  if fmt == 'mmaction2':
    return {torchvision_name_from_mmaction2(key[len('backbone.'):]): value
            for key, value in contents['state_dict'].items()}
  return contents


def backbone_features(backbone, variables: Mapping, inputs: np.ndarray) -> np.ndarray:
  """Pooled features of channels-last ``inputs`` from the Flax module ``backbone`` with the
  backbone of VCLR ``variables``, inference mode."""
  # A ViT has no BatchNorm statistics.
  backbone_variables = {'params': variables['params']['backbone'],
                        'batch_stats': variables.get('batch_stats', {}).get('backbone', {})}
  return np.asarray(_inference_fn(backbone)(backbone_variables, inputs))


def flax_features(variables: Mapping, frames: np.ndarray, depth: int,
                  width_multiplier: float) -> np.ndarray:
  """Pooled features of NHWC ``frames`` from the ResNet backbone of VCLR ``variables``."""
  return backbone_features(ResNet(depth, width_multiplier), variables, frames)


@functools.cache
def _inference_fn(backbone):
  """One jitted function per architecture, so repeated verifications reuse the compilation."""
  return jax.jit(lambda v, x: backbone.apply(v, x, train=False))


def torch_features(model, inputs: np.ndarray) -> np.ndarray:
  """``model``'s output, inference mode, on channels-last ``inputs`` (N, ..., C) handed over
  channels-first as torch takes them."""
  import torch
  channels_first = (0, inputs.ndim - 1) + tuple(range(1, inputs.ndim - 1))
  model.eval()
  with torch.no_grad():
    return model(torch.from_numpy(inputs.transpose(channels_first).copy())).numpy()


def verify_export(path: str, fmt: str, variables: Mapping, *, depth: int,
                  width_multiplier: float, image_size: int = 224, batch_size: int = 2,
                  seed: int = 0) -> Verification:
  """Loads ``path`` into torchvision's ResNet (strict) and compares its features with ours."""
  model = torchvision_resnet(depth, width_multiplier)
  model.load_state_dict(read_exported_state_dict(path, fmt), strict=True)
  frames = np.random.default_rng(seed).standard_normal(
      (batch_size, image_size, image_size, 3)).astype(np.float32)
  return Verification.of(flax_features(variables, frames, depth, width_multiplier),
                         torch_features(model, frames), image_size)


def verify_video_export(path: str, fmt: str, variables: Mapping, *, architecture: str,
                        width_multiplier: float, image_size: int = 112, num_frames: int = 16,
                        batch_size: int = 2, seed: int = 0) -> Verification:
  """Loads ``path`` into torchvision's r3d_18 / s3d (strict) and compares its features with ours
  on random (batch_size, num_frames, image_size, image_size, 3) clips."""
  model = torchvision_video_model(architecture, width_multiplier)
  model.load_state_dict(read_exported_state_dict(path, fmt), strict=True)
  clips = np.random.default_rng(seed).standard_normal(
      (batch_size, num_frames, image_size, image_size, 3)).astype(np.float32)
  ours = backbone_features(video_backbone(architecture, width_multiplier), variables, clips)
  return Verification.of(ours, torch_features(model, clips), image_size, num_frames)


def timm_vit(architecture: str, vit_size: ViTSpec):
  """timm's VisionTransformer of ``architecture`` at ``vit_size``, without classifier, taking any
  frame size (``dynamic_img_size``: the position embedding resampled as ours)."""
  import_torchvision()  # timm imports torchvision
  import timm
  return timm.create_model(TIMM_NAMES[architecture], pretrained=False, num_classes=0,
                           embed_dim=vit_size.width, depth=vit_size.depth,
                           num_heads=vit_size.num_heads, global_pool=vit_size.pool,
                           dynamic_img_size=True)


def verify_timm_export(path: str, fmt: str, variables: Mapping, *, architecture: str,
                       vit_size: ViTSpec, image_size: int = 224, batch_size: int = 2,
                       seed: int = 0) -> Verification:
  """Loads ``path`` into timm's VisionTransformer (strict) and compares its features with ours
  on random (batch_size, image_size, image_size, 3) frames."""
  model = timm_vit(architecture, vit_size)
  model.load_state_dict(read_exported_state_dict(path, fmt), strict=True)
  frames = np.random.default_rng(seed).standard_normal(
      (batch_size, image_size, image_size, 3)).astype(np.float32)
  ours = backbone_features(VisionTransformer(vit_size), variables, frames)
  return Verification.of(ours, torch_features(model, frames), image_size)
