"""R3D-18 and S3D video backbones in Flax Linen with torchvision's exact layout.

Each network is torchvision's ``torchvision.models.video.r3d_18`` / ``s3d`` without its
classifier, so weights map one to one (``vclr_jax.interop``): the same kernel sizes, strides
and explicit symmetric paddings, the same BatchNorm eps and momentum (torch defaults for R3D;
eps 1e-3 and torch momentum 0.001 for S3D) and the same initialisation (Kaiming-normal fan_out
convs for R3D; S3D sets none, so torch's default U(+-1/sqrt(fan_in)) applies).

Module names are torchvision's state_dict keys with '.' written '_' (``layer1_0/conv1_0`` for
``layer1.0.conv1.0``, ``features_5/branch1_1/0/0`` for ``features.5.branch1.1.0.0``); neither
network has an '_' in its own names, so the mapping back is mechanical.

Both take (N, T, H, W, 3) clips and return the globally average-pooled (N, F) features:

- R3D-18: what precedes torchvision's ``fc`` (its AdaptiveAvgPool3d(1) is the global mean).
- S3D: the mean of ``features(x)`` over T, H and W. torchvision's own head instead runs
  AvgPool3d((2, 7, 7), stride 1), a 1x1x1 conv classifier and then a mean over the positions;
  on its nominal 16 x 224 x 224 clips ``features`` is 2 x 7 x 7, so the two agree there (the
  classifier is linear), while on other sizes ours weighs every position equally.

BatchNorm is the project's own (resnet.BatchNorm), which normalises over every axis but the
channels, so the grouped (shuffle-BN) and synchronised statistics of the VCLR train step work
on clips as on frames.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vclr_jax.models.resnet import BatchNorm, accumulation_dtype, conv_kernel_init

# torch's Conv3d default, kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)); S3D keeps it.
torch_default_conv_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')

R3D_STAGE_BLOCKS = (2, 2, 2, 2)

# torchvision's S3D.features, by Sequential index (the index is the key prefix features.<i>):
#   ('separable', out, kernel, stride, padding): TemporalSeparableConv, a (1, k, k) conv with
#     spatial stride and padding, then a (k, 1, 1) conv with the same temporal ones;
#   ('unit', out): a 1x1x1 conv + BN + ReLU (Conv3dNormActivation);
#   ('max_pool', window, strides, padding);
#   ('inception', branch0, branch1 mid, branch1 out, branch2 mid, branch2 out, branch3):
#     SepInceptionBlock3D.
S3D_FEATURES = (
    ('separable', 64, 7, 2, 3),
    ('max_pool', (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ('unit', 64),
    ('separable', 192, 3, 1, 1),
    ('max_pool', (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ('inception', 64, 96, 128, 16, 32, 32),
    ('inception', 128, 128, 192, 32, 96, 64),
    ('max_pool', (3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ('inception', 192, 96, 208, 16, 48, 64),
    ('inception', 160, 112, 224, 24, 64, 64),
    ('inception', 128, 128, 256, 24, 64, 64),
    ('inception', 112, 144, 288, 32, 64, 64),
    ('inception', 256, 160, 320, 32, 128, 128),
    ('max_pool', (2, 2, 2), (2, 2, 2), (0, 0, 0)),
    ('inception', 256, 160, 320, 32, 128, 128),
    ('inception', 384, 192, 384, 48, 128, 128),
)
# torch.nn.BatchNorm3d(eps=0.001, momentum=0.001) in S3D; flax's momentum weighs the old value.
S3D_BN = dict(epsilon=1e-3, momentum=0.999)


def scaled(channels: int, width_multiplier: float) -> int:
  """A channel count at ``width_multiplier``, truncated as resnet.py scales its widths."""
  width = int(channels * width_multiplier)
  if width < 1:
    raise ValueError(f'width_multiplier {width_multiplier} leaves no channel of a '
                     f'{channels}-channel layer.')
  return width


def conv3d_as_2d_convs(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1, precision=None):
  """lax.conv_general_dilated of an NTHWC clip and a THWIO kernel, as one 2D convolution per
  temporal tap, summed.

  XLA:CPU runs 2D convolutions through Eigen but emits 3D ones as loops: on 2 cores a 3x7x7
  stem over 72 clips of 2 x 80 x 80 took 2.0 s forward and 3.5 s for the kernel gradient,
  against 0.15 s and 0.10 s for the same work as 2D convolutions (2026-12-05). The same sum
  of products, in another order. Takes flax's channels-last dimension numbers, no dilation,
  no groups (the only convolutions of this module).
  """
  del dimension_numbers  # channels-last, as flax's nn.Conv passes them
  if any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ())) or feature_group_count != 1:
    raise NotImplementedError('conv3d_as_2d_convs: no dilation or feature groups.')
  (pad_before, pad_after), *spatial_padding = padding
  time_stride, *spatial_strides = window_strides
  taps = rhs.shape[0]
  clips = jnp.pad(lhs, ((0, 0), (pad_before, pad_after), (0, 0), (0, 0), (0, 0)))
  n, length = clips.shape[:2]
  out_length = (length - taps) // time_stride + 1
  out = 0
  for tap in range(taps):
    frames = clips[:, tap:tap + time_stride * (out_length - 1) + 1:time_stride]
    out = out + jax.lax.conv_general_dilated(
        frames.reshape((n * out_length,) + frames.shape[2:]), rhs[tap], spatial_strides,
        spatial_padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)
  return out.reshape((n, out_length) + out.shape[1:])


def conv3d(features: int, kernel, stride, padding, name: str, dtype, kernel_init) -> nn.Conv:
  """A bias-free Conv3d with torch's symmetric per-axis padding (on CPU as 2D convolutions)."""
  on_cpu = jax.default_backend() == 'cpu'
  return nn.Conv(features, tuple(kernel), tuple(stride), padding=tuple((p, p) for p in padding),
                 use_bias=False, kernel_init=kernel_init, dtype=dtype, param_dtype=jnp.float32,
                 conv_general_dilated=conv3d_as_2d_convs if on_cpu else None, name=name)


def _triple(n: int) -> tuple[int, int, int]:
  return (n, n, n)


class R3DBlock(nn.Module):
  """torchvision's video BasicBlock with Conv3DSimple: 3x3x3 convs, and a stride that also
  halves time (as does the 1x1x1 downsample conv)."""
  width: int
  stride: int
  downsample: bool
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(conv3d, self.width, dtype=self.dtype, kernel_init=conv_kernel_init)
    out = conv(_triple(3), _triple(self.stride), _triple(1), 'conv1_0')(x)
    out = nn.relu(self.norm(name='conv1_1')(out, train))
    out = conv(_triple(3), _triple(1), _triple(1), 'conv2_0')(out)
    out = self.norm(name='conv2_1')(out, train)
    if self.downsample:
      x = conv(_triple(1), _triple(self.stride), _triple(0), 'downsample_0')(x)
      x = self.norm(name='downsample_1')(x, train)
    return nn.relu(out + x)


class R3D18(nn.Module):
  """torchvision r3d_18 backbone: (N, T, H, W, 3) clips in, (N, 512 x width) features out.

  Attributes:
    width_multiplier: scales every stage's width (1.0 is torchvision's).
    bn_groups, bn_axis_name: see resnet.BatchNorm.
    dtype: compute dtype (parameters are created in float32).
  """
  width_multiplier: float = 1.0
  bn_groups: int = 1
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(BatchNorm, groups=self.bn_groups, axis_name=self.bn_axis_name,
                             dtype=self.dtype)
    base = scaled(64, self.width_multiplier)
    x = x.astype(self.dtype)
    # BasicStem: no max-pool, time kept.
    x = conv3d(base, (3, 7, 7), (1, 2, 2), (1, 3, 3), 'stem_0', self.dtype, conv_kernel_init)(x)
    x = nn.relu(norm(name='stem_1')(x, train))
    in_features = base
    for stage, num_blocks in enumerate(R3D_STAGE_BLOCKS):
      width = base * 2**stage
      for index in range(num_blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        downsample = index == 0 and (stride != 1 or in_features != width)
        x = R3DBlock(width, stride, downsample, norm, self.dtype,
                     name=f'layer{stage + 1}_{index}')(x, train)
        in_features = width
    return jnp.mean(x.astype(accumulation_dtype(self.dtype)), axis=(1, 2, 3))


class ConvBNReLU(nn.Module):
  """torchvision's Conv3dNormActivation: bias-free conv '0', BatchNorm '1', ReLU."""
  features: int
  kernel: tuple[int, int, int]
  stride: tuple[int, int, int]
  padding: tuple[int, int, int]
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv3d(self.features, self.kernel, self.stride, self.padding, '0', self.dtype,
               torch_default_conv_init)(x)
    return nn.relu(self.norm(name='1')(x, train))


def pointwise(features: int, norm, dtype, name: str) -> ConvBNReLU:
  return ConvBNReLU(features, _triple(1), _triple(1), _triple(0), norm, dtype, name=name)


class TemporalSeparableConv(nn.Module):
  """torchvision's TemporalSeparableConv: a (1, k, k) ConvBNReLU '0', then a (k, 1, 1) one '1'."""
  features: int
  kernel: int
  stride: int
  padding: int
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    k, s, p = self.kernel, self.stride, self.padding
    x = ConvBNReLU(self.features, (1, k, k), (1, s, s), (0, p, p), self.norm, self.dtype,
                   name='0')(x, train)
    return ConvBNReLU(self.features, (k, 1, 1), (s, 1, 1), (p, 0, 0), self.norm, self.dtype,
                      name='1')(x, train)


class SepInceptionBlock(nn.Module):
  """torchvision's SepInceptionBlock3D; widths already scaled, in its argument order."""
  widths: tuple[int, int, int, int, int, int]
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    b0, b1_mid, b1_out, b2_mid, b2_out, b3 = self.widths
    norm, dtype = self.norm, self.dtype
    branches = [pointwise(b0, norm, dtype, 'branch0')(x, train)]
    for index, (mid, out) in ((1, (b1_mid, b1_out)), (2, (b2_mid, b2_out))):
      y = pointwise(mid, norm, dtype, f'branch{index}_0')(x, train)
      branches.append(TemporalSeparableConv(out, 3, 1, 1, norm, dtype,
                                            name=f'branch{index}_1')(y, train))
    # branch3.0 is a 3x3x3 max-pool (stride 1, padding 1), which has no weights.
    y = nn.max_pool(x, _triple(3), strides=_triple(1), padding=((1, 1),) * 3)
    branches.append(pointwise(b3, norm, dtype, 'branch3_1')(y, train))
    return jnp.concatenate(branches, axis=-1)


class S3D(nn.Module):
  """torchvision s3d backbone: (N, T, H, W, 3) clips in, (N, 1024 x width) features out.

  Time is strided 8x and space 32x; the smallest clip ``features`` takes is 5 frames of
  17 x 17 pixels (torchvision documents 14 x 224 x 224 for its own head).

  Attributes: as R3D18's.
  """
  width_multiplier: float = 1.0
  bn_groups: int = 1
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(BatchNorm, groups=self.bn_groups, axis_name=self.bn_axis_name,
                             dtype=self.dtype, **S3D_BN)
    width = functools.partial(scaled, width_multiplier=self.width_multiplier)
    x = x.astype(self.dtype)
    for index, (kind, *args) in enumerate(S3D_FEATURES):
      name = f'features_{index}'
      if kind == 'max_pool':
        window, strides, padding = args
        x = nn.max_pool(x, window, strides=strides, padding=tuple((p, p) for p in padding))
      elif kind == 'separable':
        features, kernel, stride, padding = args
        x = TemporalSeparableConv(width(features), kernel, stride, padding, norm, self.dtype,
                                  name=name)(x, train)
      elif kind == 'unit':
        x = pointwise(width(args[0]), norm, self.dtype, name)(x, train)
      else:
        x = SepInceptionBlock(tuple(width(c) for c in args), norm, self.dtype,
                              name=name)(x, train)
    return jnp.mean(x.astype(accumulation_dtype(self.dtype)), axis=(1, 2, 3))


ARCHITECTURES = {'r3d_18': R3D18, 's3d': S3D}
# (frames, pixels) of the smallest clip each backbone takes: S3D's valid (2, 2, 2) max-pool
# needs 2 positions left after the strides; R3D-18 pads every strided conv, so it takes any.
MIN_CLIP = {'r3d_18': (1, 1), 's3d': (5, 17)}


def _check(architecture: str):
  if architecture not in ARCHITECTURES:
    raise ValueError(f'3D architecture must be one of {sorted(ARCHITECTURES)}, '
                     f'got {architecture!r}.')


def video_backbone(architecture: str, width_multiplier: float = 1.0, bn_groups: int = 1,
                   bn_axis_name: str | None = None, dtype: Any = jnp.float32,
                   name: str | None = None) -> nn.Module:
  """The backbone called ``architecture`` ('r3d_18' or 's3d'); arguments as ResNet's."""
  _check(architecture)
  return ARCHITECTURES[architecture](width_multiplier, bn_groups, bn_axis_name, dtype, name=name)


def feature_dim(architecture: str, width_multiplier: float = 1.0) -> int:
  """Size of the pooled feature: 512 for r3d_18, 1024 for s3d (times the width)."""
  _check(architecture)
  if architecture == 'r3d_18':
    return scaled(64, width_multiplier) * 2**(len(R3D_STAGE_BLOCKS) - 1)
  b0, _, b1, _, b2, b3 = S3D_FEATURES[-1][1:]
  return sum(scaled(c, width_multiplier) for c in (b0, b1, b2, b3))
