"""A jax.profiler trace of a window of training steps (config.profile), written by process 0.

The trace goes to ``WORKDIR/profile/plugins/profile/<time>/``: ``<host>.xplane.pb`` for
TensorBoard's profile plugin (``tensorboard --logdir WORKDIR/profile``) and
``perfetto_trace.json.gz`` for https://ui.perfetto.dev. The steps before the window are
finished before the trace starts, and the window's steps before it stops, so the trace holds
exactly the window's device work.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from etils import epath

PROFILE_DIR = 'profile'


class ProfileWindow:
  """Traces steps ``start_step`` to ``start_step + num_steps - 1`` (0 steps: off).

  The training loop calls ``before_step(step, state)`` and ``after_step(step, state)`` around
  each step and ``stop()`` when it ends, so that a run ending inside the window still
  writes its trace.
  """

  def __init__(self, workdir, start_step: int, num_steps: int, log: Callable[[str], None]):
    self.first, self.last = start_step, start_step + num_steps - 1
    self.enabled = num_steps > 0 and jax.process_index() == 0
    self.directory = epath.Path(workdir) / PROFILE_DIR if self.enabled else None
    self.active = False
    self.log = log

  @classmethod
  def off(cls) -> 'ProfileWindow':
    return cls(None, 0, 0, log=print)

  @classmethod
  def from_config(cls, workdir, profile_config, log: Callable[[str], None]) -> 'ProfileWindow':
    return cls(workdir, profile_config.start_step, profile_config.num_steps, log)

  def check_start(self, first_step: int) -> None:
    """Logs when a resumed run starts after the window's first step: nothing is traced."""
    if self.enabled and first_step > self.first:
      self.log(f'config.profile: steps {self.first} to {self.last} come before this run\'s first '
               f'step {first_step}; nothing is profiled.')

  def before_step(self, step: int, state: Any) -> None:
    if self.enabled and step == self.first:
      jax.block_until_ready(state)  # the steps before the window end outside the trace
      self.directory.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
      self.active = True

  def after_step(self, step: int, state: Any) -> None:
    if self.active and step == self.last:
      self.stop(state)

  def stop(self, outputs: Any = None) -> None:
    if not self.active:
      return
    self.active = False
    try:
      jax.block_until_ready(outputs)  # the window's steps end inside the trace
    finally:
      jax.profiler.stop_trace()
    runs = sorted((self.directory / 'plugins' / 'profile').iterdir())
    self.log(f'Profile of steps {self.first} to {self.last}: {runs[-1] if runs else self.directory}'
             f' (tensorboard --logdir {self.directory}; perfetto_trace.json.gz opens in '
             'https://ui.perfetto.dev).')
