"""A run checkpointed on 8 devices resumes on 4: python -m vclr_jax.main, float64.

The state is replicated, so it restores as is on the new mesh; the data continues at the
same global example; the shuffle-BN neighbourhood is recomputed for 4 devices and logged.
The reference takes the state the 8-device run saved after step 1 and trains step 2's global
batch on 4 devices in this process. A device count the batch does not divide over stops with
the short config error before anything is written.
"""

import gzip
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import FAST_COMPILE_FLAGS, NO_BLUR, tiny_config
from vclr_jax import checkpointing
from vclr_jax import cli_errors
from vclr_jax import global_batches
from vclr_jax import profiling
from vclr_jax import train
from vclr_jax import train_state as ts
from vclr_jax import train_step as tstep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tiny_config's model and data on the command line. 8 in-memory videos at batch 8: one step
# per epoch, so step 2 draws from another epoch's shuffle than step 1, and a resume at the
# wrong example would train on other videos.
CLI_OVERRIDES = {
    'data.source': 'in_memory', 'data.in_memory_videos': 8, 'data.image_size': 80,
    'data.frame_size': '(96, 96)', 'batch_size': 8, 'queue_size': 48, 'num_epochs': 3,
    'optim.warmup_epochs': 1, 'optim.base_lr': 0.1, 'model.depth': 10,
    'model.width_multiplier': 0.125, 'model.shuffle_bn_groups_per_device': 2,
    'model.compute_dtype': 'float64', 'checkpoint.every_steps': 1, 'log_every_steps': 1,
    **NO_BLUR}
# Float64 throughout: another device count's BN batches move the numbers by far more
# (test_train_step.py, FLOAT64_RTOL).
RELATIVE_TOLERANCE = 1e-9
# How jax.profiler names one device's execution of the jitted train step.
TRAIN_STEP_EXECUTION = 'CommonPjRtLoadedExecutable::Execute (jit_step_on_device)'


def config_for():
  return tiny_config(**dict(CLI_OVERRIDES, **{'data.frame_size': (96, 96)}))


def main(workdir, num_devices, *flags):
  command = [sys.executable, '-m', 'vclr_jax.main', '--config=configs/demo.py',
             f'--workdir={workdir}',
             *[f'--config.{key}={value}' for key, value in CLI_OVERRIDES.items()], *flags]
  env = dict(os.environ, JAX_ENABLE_X64='1', PYTHONUNBUFFERED='1',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices} '
                       f'{FAST_COMPILE_FLAGS}')
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def tree_listing(root):
  return sorted((str(path.relative_to(root)), path.stat().st_mtime_ns)
                for path in root.rglob('*'))


def continued_on_4_devices(state_1):
  """Step 2 on 4 devices from the state after step 1, on the CLI's global batch of step 2."""
  with jax.enable_x64(True):
    config = config_for()
    mesh = tstep.make_mesh(jax.devices()[:4])
    tstep.resolve_shuffle_bn(config, mesh.size)
    videos = train.num_train_videos(config)
    train_step = tstep.make_train_step(config, mesh, ts.make_optimizer(config, videos),
                                       ts.learning_rate_schedule(config, videos))
    batch = next(train.host_batches(config, 1))  # the batch of step 2
    state, _ = train_step(tstep.replicate(state_1, mesh), global_batches.to_global(batch, mesh))
    return jax.device_get(state)


def template():
  with jax.enable_x64(True):
    config = config_for()
    shapes = jax.eval_shape(lambda: ts.create_train_state(
        config, train.num_train_videos(config), jax.random.key(0)))
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def saved_state(workdir, step, template):
  with jax.enable_x64(True):
    manager = checkpointing.make_manager(str(workdir), config_for().checkpoint)
    restored = manager.restore(step, args=ocp.args.StandardRestore(template))
    manager.close()
  return jax.device_get(restored)


def assert_close(got, expected, what):
  for path, value in jax.tree_util.tree_leaves_with_path(expected):
    name = f'{what}{jax.tree_util.keystr(path)}'
    other = np.asarray(dict(jax.tree_util.tree_leaves_with_path(got))[path])
    assert other.dtype == value.dtype, name
    if value.dtype.kind != 'f':
      np.testing.assert_array_equal(other, value, err_msg=name)
    else:
      scale = max(float(np.max(np.abs(value), initial=0.0)), 1e-30)
      assert float(np.max(np.abs(other - value), initial=0.0)) <= RELATIVE_TOLERANCE * scale, name


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('resume') / 'run'
  first = main(workdir, 8)
  assert first.returncode == 0, first.stderr[-3000:]
  # Resume from step 1 on 4 devices (step 2's checkpoint is moved aside, not deleted).
  # Its second step is traced too (config.profile through the entry point; its first step
  # compiles).
  second = main(workdir, 4, '--config.checkpoint.resume_step=1',
                '--config.profile.start_step=3', '--config.profile.num_steps=1')
  assert second.returncode == 0, second.stderr[-3000:]
  return workdir, first.stderr, second.stderr


def test_run_resumes_on_another_device_count_at_the_same_example(runs):
  workdir, first_log, second_log = runs
  assert 'Shuffle-BN on 8 devices: keys mixed among 6 neighbouring devices' in first_log
  assert ('Shuffle-BN on 4 devices: keys mixed among 4 neighbouring devices, 2 BN groups per '
          'device; recomputed for 4 devices (the run\'s previous start, config.json: 6 '
          'neighbouring devices, 2 groups per device).') in second_log, second_log[-3000:]
  assert 'at step 1.' in second_log
  # Step 1's state, as the 8-device run saved it, trained one step further on 4 devices.
  state_1 = saved_state(workdir, 1, template())
  assert int(state_1.step) == 1
  assert_close(saved_state(workdir, 2, template()), continued_on_4_devices(state_1),
               'step 2 (4 devices)')

def test_a_device_count_the_batch_does_not_divide_over_writes_nothing(runs):
  workdir = runs[0]
  before = tree_listing(workdir)
  result = main(workdir, 3)
  assert result.returncode == cli_errors.EXIT_USER_ERROR, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) <= cli_errors.MAX_LINES, lines
  assert 'config.batch_size=8 must be divisible by the number of devices (3)' in result.stderr
  assert tree_listing(workdir) == before


def test_the_profile_window_traces_the_train_step_on_every_device(runs):
  workdir, _, second_log = runs
  trace_dirs = list((workdir / profiling.PROFILE_DIR / 'plugins' / 'profile').iterdir())
  assert len(trace_dirs) == 1 and list(trace_dirs[0].glob('*.xplane.pb'))
  assert f'Profile of steps 3 to 3: {trace_dirs[0]}' in second_log, second_log[-3000:]
  with gzip.open(trace_dirs[0] / 'perfetto_trace.json.gz') as trace:
    names = [event.get('name', '') for event in json.load(trace)['traceEvents']]
  counts = {device: names.count(f'[{device}] {TRAIN_STEP_EXECUTION}') for device in range(4)}
  assert counts == {0: 1, 1: 1, 2: 1, 3: 1}, counts
