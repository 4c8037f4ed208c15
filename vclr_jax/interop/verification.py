"""Proves an export: torchvision's ResNet with the exported weights computes our features.

Both models run in inference mode on the same random frames; the largest absolute difference of
the pooled features is returned. torch and torchvision are imported here only.
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

# float32 convolutions in two libraries agree to ~1e-6 relative; this leaves margin.
RELATIVE_TOLERANCE = 1e-4


@dataclasses.dataclass
class Verification:
  max_abs_difference: float
  max_abs_feature: float
  image_size: int

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


def flax_features(variables: Mapping, frames: np.ndarray, depth: int,
                  width_multiplier: float) -> np.ndarray:
  """Pooled features of NHWC ``frames`` from the backbone of VCLR ``variables``, inference mode."""
  backbone = {'params': variables['params']['backbone'],
              'batch_stats': variables['batch_stats']['backbone']}
  return np.asarray(_inference_fn(depth, width_multiplier)(backbone, frames))


@functools.cache
def _inference_fn(depth: int, width_multiplier: float):
  """One jitted function per architecture, so repeated verifications reuse the compilation."""
  return jax.jit(lambda v, x: ResNet(depth, width_multiplier).apply(v, x, train=False))


def verify_export(path: str, fmt: str, variables: Mapping, *, depth: int,
                  width_multiplier: float, image_size: int = 224, batch_size: int = 2,
                  seed: int = 0) -> Verification:
  """Loads ``path`` into torchvision (strict) and compares its features with ours."""
  import torch
  model = torchvision_resnet(depth, width_multiplier)
  model.load_state_dict(read_exported_state_dict(path, fmt), strict=True)
  model.eval()
  frames = np.random.default_rng(seed).standard_normal(
      (batch_size, image_size, image_size, 3)).astype(np.float32)
  with torch.no_grad():
    torch_features = model(torch.from_numpy(frames.transpose(0, 3, 1, 2).copy())).numpy()
  ours = flax_features(variables, frames, depth, width_multiplier)
  return Verification(float(np.abs(ours - torch_features).max()), float(np.abs(ours).max()),
                      image_size)
