"""A diverging run stops with a way back: finite checkpoints, the one to resume from, the command."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import NO_BLUR, tiny_config
from vclr_jax import checkpointing
from vclr_jax import plots
from vclr_jax import train


def diverging_config(**overrides):
  # base_lr=1e30: the first update is finite but blows the weights up, the next ones are NaN.
  return tiny_config(**{
      'optim.base_lr': 1e30, 'max_nonfinite_in_a_row': 3, 'log_every_steps': 1,
      'checkpoint.every_steps': 1, 'checkpoint.keep': 2, 'checkpoint.keep_every_steps': 4,
      'checkpoint.async_save': False, **NO_BLUR, **overrides})


def saved_steps(directory):
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def test_diverged_run_keeps_finite_checkpoints_and_resumes_from_the_named_one(tmp_path):
  workdir = str(tmp_path / 'run')
  argv = ['--config=configs/demo.py', f'--workdir={workdir}', '--config.optim.base_lr=1e30']
  with pytest.raises(FloatingPointError) as stop:
    train.train_and_evaluate(diverging_config(), workdir, argv=argv)
  message = str(stop.value)
  checkpoints = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  kept = saved_steps(checkpoints)
  for step in kept:
    state = ocp.StandardCheckpointer().restore(os.path.join(checkpoints, str(step), 'default'))
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    assert all(np.isfinite(x).all() for x in leaves if x.dtype.kind == 'f'), step
  # Steps 2-4 were skipped; checkpoint 1 holds the blown-up weights of update 1, so the
  # message names the initial state, kept by keep_every_steps among the newest two.
  assert 'Steps 2 to 4' in message, message
  assert f'step 0 in {checkpoints}' in message, message
  assert 0 in kept and max(kept) >= 4, kept
  command = ('python -m vclr_jax.main --config=configs/demo.py '
             f'--workdir={workdir} --config.checkpoint.resume_step=0 --config.optim.base_lr=1e+29')
  assert message.endswith(command), message

  later = [step for step in kept if step > 0]
  # The way back, at a learning rate that trains this tiny set: 20 epochs of 2 steps, colour
  # jitter off (the drifting textures' identity is their colour), a checkpoint every 10 steps.
  resumed = train.train_and_evaluate(diverging_config(**{
      'optim.base_lr': 3.2, 'checkpoint.resume_step': 0, 'num_epochs': 20,
      'checkpoint.every_steps': 10, 'data.augment.jitter_probability': 0.0,
      'data.augment.grayscale_probability': 0.0, 'data.augment.blur_probability': 0.0}),
      workdir, argv=[])
  assert saved_steps(checkpoints)[-1] == 40
  assert resumed['nonfinite_total'] == 0.0 and np.isfinite(resumed['loss'])
  # The resumed run logged every step from 1 on, each applied, with finite losses (the
  # event files hold both runs; the later values of steps 1-4 win).
  logged = plots.read_scalars(workdir)
  steps, losses = logged['loss']
  np.testing.assert_array_equal(steps, np.arange(1, 41))
  assert np.isfinite(losses).all() and not logged['skipped_nonfinite'][1].any()
  # It learns again: the loss peaks while the queues fill with real keys (the video queue of
  # 48 holds 6 steps of 8), then falls (measured: 9.62 over steps 3-7, 8.61 over 11-20).
  assert losses[10:20].mean() < losses[2:7].mean() - 0.5, losses
  aside = [name for name in os.listdir(workdir)
           if name.startswith(checkpointing.MOVED_ASIDE_PREFIX)]
  assert len(aside) == 1
  assert saved_steps(os.path.join(workdir, aside[0])) == later


def test_resume_command_replaces_the_resume_flags():
  argv = ['--config=configs/k400.py', '--workdir', 'runs/a b', '--config.optim.base_lr', '0.4',
          '--config.checkpoint.resume_step=7', '--config.batch_size=64']
  assert train.resume_command(argv, 5, 0.04) == (
      "python -m vclr_jax.main --config=configs/k400.py --workdir 'runs/a b' "
      '--config.batch_size=64 --config.checkpoint.resume_step=5 --config.optim.base_lr=0.04')


def test_last_trusted_checkpoint_precedes_the_update_before_the_first_skipped_step():
  assert train.last_trusted_checkpoint([0, 1000, 2000, 3000], 3001) == 2000
  assert train.last_trusted_checkpoint([0, 1000, 2000, 3000], 3002) == 3000
  assert train.last_trusted_checkpoint([2000, 3000], 2001) is None


def test_resume_step_must_be_a_kept_checkpoint(tmp_path):
  os.makedirs(tmp_path / 'checkpoints' / '5')
  with pytest.raises(FileNotFoundError, match=r'resume_step=4: .* kept steps: \[5\]'):
    checkpointing.move_aside_after(str(tmp_path), 4)
