"""ResNet-18/34/50 in Flax Linen with torchvision's exact layout, so weights map one to one.

Every detail that changes the numbers follows torchvision's ``resnet*``: explicit symmetric
padding (3 on the 7x7 stem, 1 on every 3x3 conv and on the 3x3/2 max-pool), the stride on
the 3x3 conv of a bottleneck (v1.5), BN eps 1e-5 and momentum 0.1, Kaiming-normal (fan_out)
conv init, no zero-init of the last BN in a block. Module names mirror torchvision's
state_dict keys (``layer1_0.conv1`` for ``layer1.0.conv1``).

BatchNorm is this project's own because the VCLR train step needs three variants of its
batch statistics that flax.linen.BatchNorm does not offer together: per device, synchronised
across the ``data`` mesh axis (SyncBN), and computed in several groups of one device's
batch (how shuffle-BN works on a single device).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu'), untruncated.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# ResNet-10 (one basic block per stage) is for quick experiments and the test suite, where it
# halves the train step's compile time; the paper's models are ResNet-18/34/50.
STAGE_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}


def accumulation_dtype(dtype):
  """The dtype of statistics and reductions: float32, or float64 when computing in float64.

  bfloat16 and float32 compute accumulate in float32; float64 (jax_enable_x64, used by the
  tests that compare two computations tightly) keeps float64 throughout.
  """
  return jnp.promote_types(jnp.float32, dtype)


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d/3d semantics over NHWC or NTHWC (statistics over every axis but the
  channels), with grouped or cross-device statistics.

  Attributes:
    groups: in training, the batch is split into this many equal consecutive groups and
      each is normalised with its own mean and variance.
    axis_name: if set, statistics are averaged over this mapped axis (SyncBN).
  """
  groups: int = 1
  axis_name: str | None = None
  epsilon: float = 1e-5
  momentum: float = 0.9  # torch momentum 0.1 on the new value
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    features = x.shape[-1]
    accumulate = accumulation_dtype(self.dtype)
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

    if not train:
      mean, var = ra_mean.value, ra_var.value
      y = (x.astype(accumulate) - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
      return y.astype(self.dtype)

    n = x.shape[0]
    if n % self.groups:
      raise ValueError(f'BatchNorm: batch of {n} does not split into {self.groups} groups.')
    grouped = x.astype(accumulate).reshape((self.groups, n // self.groups) + x.shape[1:])
    reduce_axes = tuple(range(1, grouped.ndim - 1))
    mean = grouped.mean(axis=reduce_axes, keepdims=True)
    if self.axis_name is not None:
      mean = jax.lax.pmean(mean, self.axis_name)
    var = jnp.square(grouped - mean).mean(axis=reduce_axes, keepdims=True)
    if self.axis_name is not None:
      var = jax.lax.pmean(var, self.axis_name)
    y = (grouped - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias

    if not self.is_initializing():
      # torch updates the running variance with the unbiased estimate.
      count = grouped.size // features // self.groups
      if self.axis_name is not None:
        count *= jax.lax.psum(1, self.axis_name)
      unbiased = var * (count / max(count - 1, 1))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.reshape(
          self.groups, features).mean(0)
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased.reshape(
          self.groups, features).mean(0)
    return y.reshape(x.shape).astype(self.dtype)


def conv(features: int, kernel: int, stride: int, name: str, dtype) -> nn.Conv:
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, kernel_init=conv_kernel_init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class BasicBlock(nn.Module):
  """torchvision BasicBlock (ResNet-18/34)."""
  width: int
  stride: int
  downsample: bool
  norm: Any
  dtype: Any
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    out = conv(self.width, 3, self.stride, 'conv1', self.dtype)(x)
    out = nn.relu(self.norm(name='bn1')(out, train))
    out = conv(self.width, 3, 1, 'conv2', self.dtype)(out)
    out = self.norm(name='bn2')(out, train)
    if self.downsample:
      x = conv(self.width, 1, self.stride, 'downsample_conv', self.dtype)(x)
      x = self.norm(name='downsample_bn')(x, train)
    return nn.relu(out + x)


class Bottleneck(nn.Module):
  """torchvision Bottleneck, v1.5: the stride sits on the 3x3 conv."""
  width: int
  stride: int
  downsample: bool
  norm: Any
  dtype: Any
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    out = conv(self.width, 1, 1, 'conv1', self.dtype)(x)
    out = nn.relu(self.norm(name='bn1')(out, train))
    out = conv(self.width, 3, self.stride, 'conv2', self.dtype)(out)
    out = nn.relu(self.norm(name='bn2')(out, train))
    out = conv(self.width * 4, 1, 1, 'conv3', self.dtype)(out)
    out = self.norm(name='bn3')(out, train)
    if self.downsample:
      x = conv(self.width * 4, 1, self.stride, 'downsample_conv', self.dtype)(x)
      x = self.norm(name='downsample_bn')(x, train)
    return nn.relu(out + x)


def feature_dim(depth: int, width_multiplier: float = 1.0) -> int:
  """Size of the pooled feature: 2048 for ResNet-50, 512 for ResNet-18/34 (times the width)."""
  expansion = 4 if depth == 50 else 1
  return int(64 * width_multiplier) * 8 * expansion


class ResNet(nn.Module):
  """ResNet backbone: NHWC frames in, globally average-pooled features out (no classifier).

  Attributes:
    depth: 18, 34 or 50.
    width_multiplier: scales every stage's width (1.0 is torchvision's); small values give
      the tiny models the tests and the demo use.
    bn_groups, bn_axis_name: see BatchNorm.
    dtype: compute dtype (parameters are created in float32).
  """
  depth: int = 50
  width_multiplier: float = 1.0
  bn_groups: int = 1
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.depth not in STAGE_BLOCKS:
      raise ValueError(f'model.depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}.')
    block_cls = Bottleneck if self.depth == 50 else BasicBlock
    norm = lambda name: BatchNorm(groups=self.bn_groups, axis_name=self.bn_axis_name,
                                  dtype=self.dtype, name=name)
    base = int(64 * self.width_multiplier)
    x = x.astype(self.dtype)
    x = conv(base, 7, 2, 'conv1', self.dtype)(x)
    x = nn.relu(norm('bn1')(x, train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    in_features = base
    for stage, num_blocks in enumerate(STAGE_BLOCKS[self.depth]):
      width = base * 2**stage
      for index in range(num_blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        downsample = index == 0 and (stride != 1 or in_features != width * block_cls.expansion)
        x = block_cls(width, stride, downsample, norm, self.dtype,
                      name=f'layer{stage + 1}_{index}')(x, train)
        in_features = width * block_cls.expansion
    return jnp.mean(x.astype(accumulation_dtype(self.dtype)), axis=(1, 2))

