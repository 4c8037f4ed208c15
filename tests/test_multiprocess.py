"""Two processes, one JAX job: python -m vclr_jax.main --distributed on loopback, 2 CPU devices each.

Each process reads its own shards. Both train the whole run, then both resume from a middle
checkpoint (config.checkpoint.resume_step) and finish again. Both final states equal one
process with 4 devices trained on the same global batches, every leaf to 1e-9 of its largest
value: all in float64, where gloo's all-reduce across processes and one process's reduction,
adding in other orders, differ by float64 rounding only. (Stopping both processes together
on a signal: tests/test_loop_stop.py and its kin.)
"""

import os
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import FAST_COMPILE_FLAGS, NO_BLUR, free_port, tiny_config
from input_pipeline import record_stream
from input_pipeline import records
from input_pipeline import synthetic
from input_pipeline import train_reader
from vclr_jax import checkpointing
from vclr_jax import global_batches
from vclr_jax import train
from vclr_jax import train_state as ts
from vclr_jax import train_step as tstep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The largest difference allowed between two processes and one, as a share of a leaf's
# largest value. Another batch, or a lost device, moves the momentum buffers and the queues
# by their whole size.
RELATIVE_TOLERANCE = 1e-9
# One epoch of 2 steps (records_dir) at the peak learning rate: float64 steps are slow (XLA's
# own convolution loops), and a wrong batch or reduction shows at the first step already.
BATCH, EPOCHS = 8, 1
MIDDLE_STEP = 1
OVERRIDES = {
    'batch_size': BATCH, 'queue_size': 32, 'num_epochs': EPOCHS, 'log_every_steps': 1,
    'checkpoint.every_steps': MIDDLE_STEP, 'model.depth': 10, 'model.width_multiplier': 0.125,
    'data.image_size': 80, 'optim.warmup_epochs': 0, 'optim.base_lr': 0.1,
    'model.shuffle_bn_groups_per_device': 0, 'model.compute_dtype': 'float64', **NO_BLUR,
}


@pytest.fixture(scope='module')
def records_dir(tmp_path_factory):
  # 16 training videos in 4 shards: 2 shards per process, 2 steps per epoch.
  return synthetic.prepare_synthetic(str(tmp_path_factory.mktemp('synthetic')), num_classes=4,
                                     videos_per_class=6, videos_per_shard=4, variant='actions')


def config_for(records_dir):
  config = tiny_config(**OVERRIDES)
  config.data.source = 'records'
  config.data.records_dir = records_dir
  config.data.frame_size = (90, 120)
  return config


def launch_pair(workdir, records_dir, logs_dir, round_name, *extra_flags):
  port = free_port()
  flags = ['--config=configs/demo.py'] + [f'--config.{key}={value}'
                                          for key, value in OVERRIDES.items()]
  flags += [f'--workdir={workdir}', '--config.data.source=records',
            f'--config.data.records_dir={records_dir}', '--config.data.frame_size=(90, 120)',
            '--distributed', f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
            *extra_flags]
  # No shared compilation cache: in a rerun only one process found its step there, and the
  # other, still compiling, missed gloo's 30 s deadline at the first collective.
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=2 {FAST_COMPILE_FLAGS}',
             JAX_COMPILATION_CACHE_DIR='', JAX_ENABLE_X64='1',
             PYTHONUNBUFFERED='1')
  processes, logs = [], []
  for process_id in range(2):
    log_path = logs_dir / f'{round_name}_{process_id}.log'
    with open(log_path, 'w') as log:
      processes.append(subprocess.Popen(
          [sys.executable, '-m', 'vclr_jax.main', *flags, f'--process_id={process_id}'],
          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    logs.append(log_path)
  return processes, logs


def wait_all(processes, logs, timeout=600):
  deadline = time.time() + timeout
  for process, log in zip(processes, logs):
    try:
      process.wait(max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      raise AssertionError(f'timed out; {log}:\n' + log.read_text()[-3000:])
    assert process.returncode == 0, f'{log}:\n' + log.read_text()[-3000:]
  return [log.read_text() for log in logs]


def saved_steps(workdir):
  return sorted(int(name) for name in os.listdir(workdir / 'checkpoints') if name.isdigit())


def reference_state(config, num_videos, total_steps):
  """One process, 4 devices, the two processes' host batches concatenated per step."""
  mesh = tstep.make_mesh(jax.devices()[:4])
  tstep.resolve_shuffle_bn(config, mesh.size)
  state = train.initial_state(config, num_videos, mesh)
  step = tstep.make_train_step(config, mesh, ts.make_optimizer(config, num_videos),
                               ts.learning_rate_schedule(config, num_videos))
  hosts = [train_reader.make_train_iterator(
      config.data.records_dir, 'train', batch_size=BATCH // 2, frame_size=(90, 120),
      seed=config.seed, process_index=i, process_count=2,
      options=record_stream.ReaderOptions.from_config(config.data)) for i in range(2)]
  for _ in range(total_steps):
    parts = [next(host) for host in hosts]
    batch = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    state, _ = step(state, global_batches.to_global(batch, mesh))
  return state


def test_two_processes_resume_and_equal_one_process_in_float64(records_dir, tmp_path):
  workdir = tmp_path / 'run'
  num_videos = records.read_index(records_dir, 'train')['num_videos']
  total_steps = EPOCHS * (num_videos // BATCH)
  assert MIDDLE_STEP < total_steps

  wait_all(*launch_pair(workdir, records_dir, tmp_path, 'whole'))
  assert saved_steps(workdir) == [0, MIDDLE_STEP, total_steps]
  outputs = wait_all(*launch_pair(workdir, records_dir, tmp_path, 'resumed',
                                  f'--config.checkpoint.resume_step={MIDDLE_STEP}'))
  for output in outputs:
    assert f'at step {MIDDLE_STEP}.' in output and 'Resumed from' in output, output[-3000:]
  assert saved_steps(workdir) == [0, MIDDLE_STEP, total_steps]
  # The whole run's last checkpoint, moved aside by the resumed run.
  whole_run_last = next(workdir.glob(f'{checkpointing.MOVED_ASIDE_PREFIX}*/{total_steps}'))

  with jax.enable_x64(True):
    config = config_for(records_dir)
    on_devices = reference_state(config, num_videos, total_steps)
    manager = checkpointing.make_manager(str(workdir), config.checkpoint)
    expected = jax.device_get(on_devices)
    resumed = jax.device_get(checkpointing.restore_latest(manager, on_devices))
    whole = ocp.StandardCheckpointer().restore(whole_run_last / checkpointing.ITEM_DIR, expected)
  assert_equal_to_float64_rounding(resumed, expected, 'resumed run')
  assert_equal_to_float64_rounding(whole, expected, 'whole run')


def assert_equal_to_float64_rounding(restored, expected, what):
  assert int(restored.step) == int(expected.step), what
  got = dict(jax.tree_util.tree_leaves_with_path(restored))
  relative_errors = {}
  for path, value in jax.tree_util.tree_leaves_with_path(expected):
    name = what + jax.tree_util.keystr(path)
    assert got[path].dtype == value.dtype, name
    if value.dtype.kind != 'f':
      np.testing.assert_array_equal(got[path], value, err_msg=name)
      continue
    scale = float(np.max(np.abs(value))) if value.size else 0.0
    error = float(np.max(np.abs(got[path] - value), initial=0.0))
    relative_errors[name] = error / scale if scale else error
  assert all(value.dtype == np.float64 for value in jax.tree.leaves(expected)
             if value.dtype.kind == 'f')
  worst = sorted(relative_errors.items(), key=lambda item: -item[1])[:5]
  assert worst[0][1] <= RELATIVE_TOLERANCE, worst
