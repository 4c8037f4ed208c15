"""config.model.bn_batching: the BatchNorm batches of the released code ('reference') and ours.

The first BatchNorm of the backbone sees conv1 of the crops, which NumPy computes directly.
Its running statistics after one step (torch's update, momentum 0.1, unbiased variance, once
per BN batch in the order the passes run) tell exactly which frames formed each BN batch.
"""

import jax
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from conftest import NO_BLUR, tiny_config
from test_train_step import NUM_VIDEOS, crops_of, run_steps, source
from vclr_jax import train_state as ts

MOMENTUM = 0.9  # torch's BatchNorm momentum 0.1 on the new value


def conv1(frames, kernel):
  """ResNet stem: 7x7 convolution, stride 2, zero padding 3, NHWC frames, HWIO kernel."""
  padded = np.pad(frames, ((0, 0), (3, 3), (3, 3), (0, 0)))
  windows = sliding_window_view(padded, (7, 7), axis=(1, 2))[:, ::2, ::2]  # N, H, W, C, 7, 7
  return np.einsum('nhwcij,ijco->nhwo', windows, kernel)


def running_stats(batch_stats, bn_batches):
  """torch's running mean/var after BN batches run in order; each BN batch is a list of
  equal groups normalised separately (devices or shuffle-BN groups), averaged over them."""
  mean, var = np.asarray(batch_stats['mean']), np.asarray(batch_stats['var'])
  for groups in bn_batches:
    count = groups[0].size // groups[0].shape[-1]
    mean = MOMENTUM * mean + (1 - MOMENTUM) * np.mean([g.mean((0, 1, 2)) for g in groups], 0)
    unbiased = [g.var((0, 1, 2)) * count / (count - 1) for g in groups]
    var = MOMENTUM * var + (1 - MOMENTUM) * np.mean(unbiased, 0)
  return mean, var


@pytest.mark.parametrize('num_devices,key_bn,bn_batching', [
    (1, 'shuffle', 'reference'), (8, 'sync', 'reference'), (1, 'shuffle', 'fused')])
def test_first_bn_layer_normalises_the_expected_batches(num_devices, key_bn, bn_batching):
  with jax.enable_x64(True):
    config = tiny_config(**{
        'model.compute_dtype': 'float64', 'model.key_bn': key_bn, 'batch_size': 8,
        'model.online_bn': 'per_device', 'model.bn_batching': bn_batching,
        # One group per device: the shuffle's permutation then cannot change a BN batch.
        'model.shuffle_bn_groups_per_device': 1, **NO_BLUR})
    state0 = jax.device_get(ts.create_train_state(config, NUM_VIDEOS, jax.random.key(0)))
    state1, _ = run_steps(config, num_devices, 1, state=state0)
    batch = source(config).batch(0)
    crops = crops_of(batch, state0, config)
  kernel = np.asarray(state0.params['backbone']['conv1']['kernel'])
  features = conv1(crops.reshape((-1,) + crops.shape[2:]), kernel).reshape(
      crops.shape[:2] + (40, 40, kernel.shape[-1]))
  rows = np.arange(config.batch_size)
  anchor = batch['anchor']
  x1, xq = features[:, 6], features[rows, anchor]
  x2 = features[rows, np.where(anchor == 0, 1, 0)]
  x3 = features[rows, np.where(anchor == 2, 1, 2)]
  key_tuple = features[:, 3:6].reshape((-1,) + features.shape[2:])

  # The key encoder: shuffle-BN on one device with one group, or SyncBN, normalises each
  # pass over all of its frames.
  if bn_batching == 'reference':
    key_batches = [[x1], [x2], [x3], [key_tuple]]
    # Online per-device BN: xq alone, then the query tuple, each per device.
    online_batches = [np.split(xq, num_devices), np.split(features[:, :3], num_devices)]
  else:
    key_batches = [[np.concatenate([x1, x2, x3, key_tuple])]]
    online_batches = [np.split(features[:, :3], num_devices)]
  online_batches = [[g.reshape((-1,) + g.shape[-3:]) for g in groups] for groups in online_batches]
  for got, batches, initial in (
      (state1.ema_batch_stats, key_batches, state0.ema_batch_stats),
      (state1.batch_stats, online_batches, state0.batch_stats)):
    mean, var = running_stats(initial['backbone']['bn1'], batches)
    np.testing.assert_allclose(got['backbone']['bn1']['mean'], mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got['backbone']['bn1']['var'], var, rtol=1e-9, atol=1e-12)
