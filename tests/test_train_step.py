"""The SPMD train step: multi-device equivalence, shuffle-BN, queues, EMA, schedule, non-finite."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import k400
from configs import k400_reference
from conftest import NO_BLUR, tiny_config
from split_files import write_split_index
from vclr_jax import augment
from vclr_jax import config_checks
from vclr_jax import train_state as ts
from vclr_jax import train_step as tstep
from vclr_jax.global_batches import to_global
from vclr_jax.in_memory_data import InMemoryVideos, make_videos

NUM_VIDEOS = 16


@functools.lru_cache(maxsize=None)
def videos():
  return make_videos(NUM_VIDEOS, 12, 96, seed=0)


def source(config):
  return InMemoryVideos(videos(), batch_size=config.batch_size, seed=config.seed)


def crops_of(batch, state, config):
  """The step's seven crops per example, recomputed on the whole global batch at once."""
  b = len(batch['anchor'])
  sources = np.concatenate([np.tile(np.arange(6), (b, 1)), batch['anchor'][:, None]], axis=1)
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  crops = _jitted_crops(config.data.image_size, augment.AugmentConfig.from_config(
      config.data.augment), dtype)(jnp.asarray(batch['frames']), jnp.asarray(sources, jnp.int32),
                                   jnp.asarray(state.rng), jnp.asarray(state.step))
  return np.asarray(crops)


@functools.lru_cache(maxsize=None)
def _jitted_crops(image_size, augment_config, dtype):
  # One compiled computation instead of op-by-op dispatch (half the CPU time in float64).
  def crops(frames, sources, rng, step):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
    _, augment_key = jax.random.split(step_key)
    keys = augment.example_keys(augment_key, jnp.arange(frames.shape[0]), 7)
    return augment.augment_frames(frames, sources, keys, image_size, augment_config, dtype)
  return jax.jit(crops)


@functools.lru_cache(maxsize=None)
def compiled_step(config_json, num_devices):
  """One jitted step per (config, devices), shared by the tests to save compile time."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  mesh = tstep.make_mesh(jax.devices()[:num_devices])
  config_checks.check_divisibility(config, num_devices)
  step = tstep.make_train_step(config, mesh, ts.make_optimizer(config, NUM_VIDEOS),
                               ts.learning_rate_schedule(config, NUM_VIDEOS))
  return mesh, step


def run_steps(config, num_devices, num_steps, state=None, start=0):
  mesh, step = compiled_step(config.to_json(), num_devices)
  if state is None:
    state = ts.create_train_state(config, NUM_VIDEOS, jax.random.key(0))
  state = tstep.replicate(state, mesh)
  data = source(config)
  metrics = None
  for i in range(start, start + num_steps):
    state, metrics = step(state, to_global(data.batch(i), mesh))
  return jax.device_get(state), jax.device_get(metrics)


def max_abs_diff(a, b):
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - y))), a, b)
  return max(jax.tree.leaves(diffs))


# Claims that two computations are equal run in float64: float32 rounding of the gradient
# reductions depends on the CPU's vector width and XLA's fusion (1 device vs 8 differed by
# 6e-5 relative on some machines), whereas a real difference (another BN batch, a missing
# device's contribution) moves the numbers by far more than float64 rounding (~1e-16 per
# operation, ~1e-12 after a step's reductions).
FLOAT64_RTOL = 1e-9


def sync_float64_config():
  # Batch 8 (one example per device on 8): float64 steps are slow (XLA's own convolution loops).
  return tiny_config(**{'model.online_bn': 'sync', 'model.key_bn': 'sync', 'batch_size': 8,
                        'queue_size': 24, 'model.compute_dtype': 'float64'})


# One config for the tests of the optimiser, EMA, skipped steps and bfloat16 compute, so that
# they share one compiled step (test_checkpointing.py's too, through the test run's compilation
# cache): plain SGD (the applied learning rate is |update| / |gradient|), the released EMA
# momentum, and a learning rate at which the first warm-up step (lr / 100) moves the online
# weights visibly. The computation runs in bfloat16; parameters, gradients, optimizer state and
# EMA stay float32, so the float32 claims of these tests hold as they are. Without the blur:
# at the suite's compile flags (conftest.FAST_COMPILE_FLAGS) XLA:CPU fuses the bfloat16 blur's
# two gathered passes into one and the step takes 56 s instead of 2.5 (0.09 s at XLA's
# defaults); tests/test_augment.py holds the bfloat16 blur.
SGD_CONFIG = {'optim.momentum': 0.0, 'optim.weight_decay': 0.0, 'ema_momentum': 0.999,
              'optim.base_lr': 0.8, 'model.compute_dtype': 'bfloat16', **NO_BLUR}


@functools.lru_cache(maxsize=None)
def sync_float64_steps(num_devices, num_steps):
  """(state, metrics) after ``num_steps`` steps of sync_float64_config on ``num_devices`` from
  key 0 (host copies; metrics None at step 0). Shared by the tests below, which need the same
  first steps: a float64 step on 8 devices costs over 10 CPU-seconds. Call under enable_x64."""
  config = sync_float64_config()
  if num_steps == 0:
    return jax.device_get(ts.create_train_state(config, NUM_VIDEOS, jax.random.key(0))), None
  state, _ = sync_float64_steps(num_devices, num_steps - 1)
  return run_steps(config, num_devices, 1, state=state, start=num_steps - 1)


def test_eight_devices_with_sync_bn_equal_one_device():
  with jax.enable_x64(True):
    config = sync_float64_config()
    initial, _ = sync_float64_steps(8, 0)
    state1, metrics1 = run_steps(config, 1, 1)
    state8, metrics8 = sync_float64_steps(8, 1)
  assert all(x.dtype == np.float64 for x in jax.tree.leaves(state8.params))
  for name in ('loss', 'loss_inter', 'loss_intra', 'loss_video', 'loss_order', 'grad_norm'):
    np.testing.assert_allclose(metrics8[name], metrics1[name], rtol=FLOAT64_RTOL, err_msg=name)
  # opt_state holds the momentum buffer, i.e. the gradient (plus weight decay) of the step.
  for field in ('params', 'opt_state', 'ema_params', 'batch_stats', 'ema_batch_stats',
                'queue_inter', 'queue_video'):
    change = max_abs_diff(getattr(state1, field), getattr(initial, field))
    assert change > 0, field
    assert max_abs_diff(getattr(state8, field), getattr(state1, field)) <= FLOAT64_RTOL * change, field
  assert int(state8.queue_inter_pos) == int(state1.queue_inter_pos) == (
      3 * config.batch_size) % config.queue_size


@pytest.mark.parametrize('neighbourhood', [2, 4, 8])
def test_shuffle_returns_every_key_to_its_example_and_mixes_every_bn_group(neighbourhood):
  mesh = tstep.make_mesh()
  n_dev, per_device, groups = mesh.size, 48, 4
  # Row r holds (r, device of r): the rows' source devices are known after the shuffle.
  rows = np.arange(n_dev * per_device)
  frames = jnp.asarray(np.stack([rows, rows // per_device], axis=1), jnp.float32)

  def apply_fn(x):
    # Row-wise function, plus for every BN group (contiguous rows) the set of source devices.
    sources = jax.nn.one_hot(x[:, 1].astype(jnp.int32), n_dev).reshape(groups, -1, n_dev)
    return x * 3.0 + 1.0, (x[:, 0], sources.max(axis=1))

  def on_device(x):
    return tstep.shuffled_across_devices(apply_fn, x, jax.random.key(3), neighbourhood)

  sharded = jax.jit(jax.shard_map(on_device, mesh=mesh, in_specs=P('data'),
                                  out_specs=(P('data'), (P('data'), P('data')))))
  out, (seen, group_sources) = sharded(
      jax.device_put(frames, jax.sharding.NamedSharding(mesh, P('data'))))
  np.testing.assert_array_equal(out, frames * 3.0 + 1.0)
  seen = np.asarray(seen).reshape(n_dev, per_device).astype(int)
  assert sorted(seen.ravel().tolist()) == rows.tolist()  # every frame processed exactly once
  group_sources = np.asarray(group_sources).reshape(n_dev, groups, n_dev)
  for d in range(n_dev):
    # Device d processes an equal share of itself and of its neighbourhood - 1 predecessors.
    counts = np.bincount(seen[d] // per_device, minlength=n_dev)
    expected = np.zeros(n_dev, int)
    expected[[(d - r) % n_dev for r in range(neighbourhood)]] = per_device // neighbourhood
    assert counts.tolist() == expected.tolist()
    for g in range(groups):
      # No BN group of keys holds only the examples of one device's (the query's) batch.
      assert group_sources[d, g].sum() >= 2, (d, g)


@pytest.mark.parametrize('num_devices', [8, 16, 32, 64, 128, 256])
def test_k400_config_passes_the_device_checks_with_shuffle_bn(num_devices):
  config = k400.get_config()
  config_checks.check_divisibility(config, num_devices)
  tstep.resolve_shuffle_bn(config, num_devices)
  devices = config.model.shuffle_bn_devices
  key_frames = 6 * config.batch_size // num_devices
  assert 2 <= devices <= 8 and key_frames % devices == 0
  assert key_frames // config.model.shuffle_bn_groups_per_device >= 2


def test_device_checks_name_the_config_key():
  config = tiny_config()
  with pytest.raises(ValueError, match='batch_size=8 must be divisible'):
    config_checks.check_divisibility(config, 3)
  config.model.shuffle_bn_devices = 5
  with pytest.raises(ValueError, match='shuffle_bn_devices=5'):
    config_checks.check_divisibility(config, 8)
  config.model.shuffle_bn_devices = 1
  with pytest.raises(ValueError, match='normalises every key with its own'):
    config_checks.check_divisibility(config, 8)
  config.model.shuffle_bn_devices = 0
  config.model.shuffle_bn_groups_per_device = 5
  with pytest.raises(ValueError, match='shuffle_bn_groups_per_device'):
    config_checks.check_divisibility(config, 1)


def test_k400_reference_config_requires_an_existing_init_from(tmp_path):
  config = k400_reference.get_config()
  assert (config.model.bn_batching, config.model.order_norm, config.batch_size,
          config.optim.base_lr, config.num_epochs) == ('reference', 'over_frames', 256, 0.1, 400)
  config.data.records_dir = str(tmp_path)
  write_split_index(tmp_path, 'train', [300] * 8)
  with pytest.raises(ValueError, match='config.init_from is required'):
    config_checks.validate_config(config, 8, 1)
  config.init_from = str(tmp_path / 'missing.pth.tar')
  with pytest.raises(ValueError, match='config.init_from=.*missing.pth.tar does not exist'):
    config_checks.validate_config(config, 8, 1)
  placeholder = tmp_path / 'moco_v2_200ep_pretrain.pth.tar'
  placeholder.write_bytes(b'')
  config.init_from = str(placeholder)
  for num_devices in (1, 8):  # B frames per key pass: 256 in 8 groups, or 32 over 8 devices
    config_checks.validate_config(config, num_devices, 1)
  config.model.bn_batching = 'fuse'
  with pytest.raises(ValueError, match='config.model.bn_batching must be one of'):
    config_checks.check_bn_config(config.model)


def test_queues_receive_gathered_keys_at_their_positions_and_wrap():
  with jax.enable_x64(True):
    _check_queues_receive_gathered_keys()


def _check_queues_receive_gathered_keys():
  config = sync_float64_config()  # the steps of the 8-device test above
  keys_seen = {'inter': [], 'video': []}
  model = ts.build_model(config.model)
  features = jax.jit(lambda variables, inputs: model.apply(
      variables, inputs, train=True, method='features', mutable=['batch_stats'])[0])

  # The keys the step must enqueue, recomputed independently on the whole global batch.
  data = source(config)
  for i in range(3):
    state, _ = sync_float64_steps(8, i)  # the state before step i
    batch = data.batch(i)
    ema = {'params': state.ema_params, 'batch_stats': state.ema_batch_stats}
    b = config.batch_size
    other_a = np.where(batch['anchor'] == 0, 1, 0)
    other_b = np.where(batch['anchor'] == 2, 1, 2)
    rows = np.arange(b)
    crops = crops_of(batch, state, config)
    inputs = np.concatenate([crops[:, 6], crops[rows, other_a], crops[rows, other_b],
                             crops[:, 3:6].reshape((3 * b,) + crops.shape[2:])])
    feats = features(ema, inputs)
    frame = model.apply(ema, feats[:3 * b], method='frame_embeddings')
    keys_seen['inter'].append(np.asarray(frame['inter']))  # k1, k2, k3 blocks in order
    keys_seen['video'].append(np.asarray(model.apply(
        ema, feats[3 * b:].reshape(b, 3, -1), method='video_embedding')))
  state, _ = sync_float64_steps(8, 3)
  # Inter: 3 steps x 24 rows into 24 slots -> positions 0..71 mod 24, each slot written three
  # times; video: 3 x 8 rows fill the 24 slots once and wrap to 0.
  size = config.queue_size
  assert size == 24 and config.batch_size == 8
  inter_written = np.concatenate(keys_seen['inter'])
  assert len(inter_written) == 3 * size
  expected_inter = np.zeros((size, 128))
  for position, row in enumerate(inter_written):
    expected_inter[position % size] = row
  assert int(state.queue_inter_pos) == 0
  np.testing.assert_allclose(state.queue_inter, expected_inter, rtol=0, atol=FLOAT64_RTOL)
  np.testing.assert_allclose(state.queue_inter, inter_written[-size:], rtol=0, atol=FLOAT64_RTOL)
  assert int(state.queue_video_pos) == 0
  np.testing.assert_allclose(state.queue_video, np.concatenate(keys_seen['video']), rtol=0,
                             atol=FLOAT64_RTOL)  # unit vectors: absolute = relative


def test_queue_size_must_be_a_multiple_of_the_batch():
  with pytest.raises(ValueError, match='queue_size=100 must be a multiple of config.batch_size=8'):
    config_checks.check_queue_size(tiny_config(queue_size=100))


def test_ema_after_a_step_mixes_old_key_and_new_online_weights():
  config = tiny_config(**SGD_CONFIG)
  state0 = jax.device_get(ts.create_train_state(config, NUM_VIDEOS, jax.random.key(0)))
  # Make the key encoder differ from the online one so the mixture is visible.
  state0 = state0.replace(ema_params=jax.tree.map(lambda x: x * 0.5 + 0.01, state0.ema_params))
  state1, _ = run_steps(config, 1, 1, state=state0)
  expected = jax.tree.map(lambda k, q: 0.999 * k + 0.001 * q, state0.ema_params, state1.params)
  # One float32 multiply-add per leaf: at most a few ulp (6e-8 each) of weights below 2 in size.
  assert max_abs_diff(state1.ema_params, expected) < 1e-6
  assert max_abs_diff(state1.params, state0.params) > 1e-4  # the online weights did move


def test_learning_rate_schedule_matches_formula():
  config = tiny_config(batch_size=8, num_epochs=10, **{'optim.warmup_epochs': 2,
                                                       'optim.base_lr': 0.2})
  num_videos = 40  # 5 steps per epoch: 10 warm-up steps, 40 cosine steps
  schedule = ts.learning_rate_schedule(config, num_videos)
  peak = 0.2 * 8 / 256
  for step in (0, 3, 10, 25, 49, 50):
    with jax.enable_x64(True):  # the formula in float64, so a 1e-12 match is meaningful
      got = float(schedule(step))
    if step < 10:
      expected = peak / 100 + (peak - peak / 100) * step / 10
    else:
      progress = (step - 10) / 40
      expected = 1e-6 + (peak - 1e-6) * 0.5 * (1 + math.cos(math.pi * progress))
    np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=str(step))


def test_sgd_matches_torch_style_momentum_and_weight_decay():
  with jax.enable_x64(True):  # optax in float64 against the float64 NumPy statement
    config = tiny_config(**{'optim.weight_decay': 0.1})
    optimizer = ts.make_optimizer(config, NUM_VIDEOS)
    params = {'w': jnp.array([1.0, -2.0], jnp.float64)}
    grads = {'w': jnp.array([0.5, 0.25], jnp.float64)}
    opt_state = optimizer.init(params)
    lr = ts.learning_rate_schedule(config, NUM_VIDEOS)
    buf = np.zeros(2)
    p = np.array([1.0, -2.0])
    for step in range(3):
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = jax.tree.map(lambda a, u: a + u, params, updates)
      g = np.array([0.5, 0.25]) + 0.1 * p  # torch: d_p = grad + wd * p; buf = m * buf + d_p
      buf = 0.9 * buf + g
      # optax counts steps in int32, so it applies the schedule's float32 value (the schedule
      # itself is tested above); the reference uses that same value.
      p = p - float(lr(jnp.int32(step))) * buf
    np.testing.assert_allclose(params['w'], p, rtol=1e-12)


def test_nonfinite_step_is_not_applied_but_counted():
  config = tiny_config(**SGD_CONFIG)
  state0 = jax.device_get(ts.create_train_state(config, NUM_VIDEOS, jax.random.key(0)))
  bad = state0.replace(queue_video=np.full_like(state0.queue_video, np.nan))
  state1, metrics = run_steps(config, 1, 1, state=bad)
  assert metrics['skipped_nonfinite'] == 1.0
  assert int(state1.step) == 1 and int(state1.nonfinite_in_a_row) == 1
  assert int(state1.nonfinite_total) == 1
  assert max_abs_diff(state1.params, state0.params) == 0.0
  assert int(state1.queue_inter_pos) == 0


def test_bfloat16_compute_keeps_float32_parameters():
  config = tiny_config(**SGD_CONFIG)  # bfloat16 compute
  assert config.model.compute_dtype == 'bfloat16'
  state, metrics = run_steps(config, 1, 1)
  assert np.isfinite(metrics['loss'])
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))


def test_learning_rate_after_skipped_steps_is_the_schedule_at_the_step():
  # Plain SGD (no momentum, no decay): the update is -lr x gradient, so the applied rate is
  # |update| / |gradient|. The first two steps are poisoned (NaN queue) and skipped.
  config = tiny_config(**SGD_CONFIG)
  state0 = jax.device_get(ts.create_train_state(config, NUM_VIDEOS, jax.random.key(0)))
  poisoned = state0.replace(queue_video=np.full_like(state0.queue_video, np.nan))
  skipped, metrics = run_steps(config, 1, 2, state=poisoned)
  assert int(skipped.step) == 2 and int(skipped.nonfinite_total) == 2
  assert max_abs_diff(skipped.params, state0.params) == 0.0
  state3, metrics = run_steps(config, 1, 1, state=skipped.replace(queue_video=state0.queue_video),
                              start=2)
  assert metrics['skipped_nonfinite'] == 0.0
  change = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, state3.params, state0.params)
  applied = float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(change))))
  applied /= float(metrics['grad_norm'])
  schedule = ts.learning_rate_schedule(config, NUM_VIDEOS)
  # 2 steps per epoch, 1 warm-up epoch: step 2 is the peak, 100 x the rate of step 0.
  expected = float(schedule(2))
  assert expected > 50 * float(schedule(0))
  np.testing.assert_allclose(applied, expected, rtol=1e-3)
  np.testing.assert_allclose(metrics['learning_rate'], expected, rtol=1e-6)
