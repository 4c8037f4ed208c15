"""Orbax round trip of the whole TrainState, and stop-resume equal to an uninterrupted run."""

import jax
import numpy as np

from conftest import NO_BLUR, tiny_config
from test_train_step import NUM_VIDEOS, SGD_CONFIG, run_steps
from vclr_jax import checkpointing
from vclr_jax import train_state as ts
from vclr_jax import train_step as tstep


def assert_bit_exact(a, b):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)


def manager_for(path, config):
  return checkpointing.make_manager(str(path), config.checkpoint)


def test_round_trip_is_bit_exact_for_every_leaf(tmp_path):
  # The step test_train_step.py compiles for its optimiser tests (the test run's compilation
  # cache): bfloat16 compute, a float32 state; without momentum the optimizer's trace holds
  # the last gradient.
  config = tiny_config(**SGD_CONFIG)
  state, _ = run_steps(config, 1, 2)  # non-trivial optimizer state, queues and positions
  mesh = tstep.make_mesh(jax.devices()[:1])
  manager = manager_for(tmp_path, config)
  checkpointing.save(manager, int(state.step), tstep.replicate(state, mesh), force=True)
  manager.wait_until_finished()
  template = tstep.replicate(ts.create_train_state(config, NUM_VIDEOS, jax.random.key(5)), mesh)
  restored = checkpointing.restore_latest(manager_for(tmp_path, config), template)
  assert_bit_exact(jax.device_get(restored), state)
  assert int(restored.queue_video_pos) == int(state.queue_video_pos) == 16


def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path):
  config = tiny_config(**{'model.shuffle_bn_groups_per_device': 1, **NO_BLUR})
  n = 2
  # 4 devices: shuffle-BN's all_to_all moves keys between devices in every step.
  uninterrupted, _ = run_steps(config, 4, 2 * n)
  first_half, _ = run_steps(config, 4, n)
  mesh = tstep.make_mesh(jax.devices()[:4])
  manager = manager_for(tmp_path, config)
  checkpointing.save(manager, n, tstep.replicate(first_half, mesh), force=True)
  manager.wait_until_finished()
  template = tstep.replicate(ts.create_train_state(config, NUM_VIDEOS, jax.random.key(9)), mesh)
  resumed_start = jax.device_get(checkpointing.restore_latest(manager_for(tmp_path, config), template))
  resumed, _ = run_steps(config, 4, n, state=resumed_start, start=n)
  assert_bit_exact(resumed, uninterrupted)


def test_encoder_variables_load_from_a_run_directory(tmp_path):
  config = tiny_config()
  state = jax.device_get(ts.create_train_state(config, NUM_VIDEOS, jax.random.key(0)))
  manager = manager_for(tmp_path, config)
  checkpointing.save(manager, 7, state, force=True)
  manager.wait_until_finished()
  variables, step = checkpointing.load_encoder_variables(str(tmp_path))
  assert step == 7
  assert_bit_exact(variables, {'params': state.params, 'batch_stats': state.batch_stats})
