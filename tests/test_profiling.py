"""config.profile: a jax.profiler trace of a window of steps, written to WORKDIR/profile/."""

import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from conftest import tiny_config
from vclr_jax import checkpointing
from vclr_jax import config_checks
from vclr_jax import global_batches
from vclr_jax import profiling
from vclr_jax import train_step
from vclr_jax import training_loop
from vclr_jax.cli_errors import ConfigError


@struct.dataclass
class ToyState:
  step: jax.Array
  total: jax.Array


@jax.jit
def profiled_toy_step(state, batch):
  total = state.total + jnp.tanh(batch['x']).sum()
  return ToyState(step=state.step + 1, total=total), {'total': total}


def test_trace_of_the_window_holds_its_steps_and_no_others(tmp_path):
  mesh = train_step.make_mesh()
  state = train_step.replicate(ToyState(step=jnp.zeros((), jnp.int32),
                                        total=jnp.zeros((), jnp.float32)), mesh)

  def batches():
    while True:
      yield global_batches.to_global({'x': np.ones((8, 16), np.float32)}, mesh)

  checkpoint_config = tiny_config().checkpoint
  checkpoint_config.update(every_steps=1000, async_save=False)
  manager = checkpointing.make_manager(str(tmp_path), checkpoint_config)
  lines = []
  profile = profiling.ProfileWindow(str(tmp_path), start_step=3, num_steps=2, log=lines.append)
  training_loop.run(step_fn=profiled_toy_step, state=state, batches=batches(), manager=manager,
                    mesh=mesh, start_step=0, total_steps=6, batch_size=8, log_every_steps=1000,
                    describe=lambda step, means: '', log=lines.append, profile=profile)

  runs = list((tmp_path / profiling.PROFILE_DIR / 'plugins' / 'profile').iterdir())
  assert len(runs) == 1
  assert list(runs[0].glob('*.xplane.pb'))  # TensorBoard's profile plugin reads these
  assert any(f'Profile of steps 3 to 4: {runs[0]}' in line for line in lines), lines
  with gzip.open(runs[0] / 'perfetto_trace.json.gz') as trace:
    events = json.load(trace)['traceEvents']
  names = [event.get('name', '') for event in events]
  # Each of the 8 devices ran steps 3 and 4 inside the trace, the other four steps outside it.
  for device in range(mesh.size):
    runs_on_device = names.count(
        f'[{device}] CommonPjRtLoadedExecutable::Execute (jit_profiled_toy_step)')
    assert runs_on_device == 2, (device, sorted(set(names)))


def test_a_window_before_a_resumed_run_is_logged_and_writes_nothing(tmp_path):
  lines = []
  profile = profiling.ProfileWindow(str(tmp_path), start_step=3, num_steps=2, log=lines.append)
  profile.check_start(7)
  for step in range(7, 9):
    profile.before_step(step, None)
    profile.after_step(step, None)
  profile.stop()
  assert lines == ['config.profile: steps 3 to 4 come before this run\'s first step 7; nothing '
                   'is profiled.']
  assert not (tmp_path / profiling.PROFILE_DIR).exists()


@pytest.mark.parametrize('overrides, message', [
    ({'profile.num_steps': -1}, 'config.profile.num_steps=-1 must be a whole number'),
    ({'profile.num_steps': 2, 'profile.start_step': 0}, 'config.profile.start_step=0 must be'),
])
def test_profile_window_errors_name_the_key(overrides, message):
  with pytest.raises(ConfigError, match=message):
    config_checks.validate_config(tiny_config(**overrides), num_devices=8, num_processes=1)

