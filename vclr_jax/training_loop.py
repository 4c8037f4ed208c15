"""The one training loop of pretraining and TSN fine-tuning: steps, logging, checkpoints, stops.

Per step it runs the jitted step on the next global batch and lets Orbax save at the
checkpoint cadence. Every ``log_every_steps`` it averages the metrics of the window, writes
them to TensorBoard (if given a writer) and logs one line with the caller's metrics, the
rate and the ETA.

A stop is the same on every host. SIGTERM/SIGINT only raise a flag on the host that got
them; each step also runs a tiny all-reduce of every host's flag, and all hosts read the
previous step's result, so they see the same value at the same step, save that step together
and raise cli_errors.RunStopped (exit status 3: the message says which step is saved and to
rerun the same command). The platform's preemption notice (Orbax's ``reached_preemption``,
agreed by JAX's coordination service) stops the loop the same way. So does an error that
this host's input wants to end the run with (``host_stop``: too many damaged records,
input_pipeline/damage.py):
every host saves the same step, then the host with the error raises it and the others raise
StoppedByAnotherHost. Reading the previous step's values keeps one step in flight.

A full disk (ENOSPC from Orbax's or TensorBoard's writer threads) ends the run with one
DiskFullError naming the workdir, the size of a checkpoint and the last intact one; the
writers are shut down without printing their own copies of the error.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vclr_jax import checkpointing
from vclr_jax import cli_errors
from vclr_jax import profiling


# What the per-step all-reduce carries from each host; the largest wins.
_NO_STOP, _SIGNAL, _HOST_ERROR = 0, 1, 2
# How long a host waits for the others to finish compiling the step: a pod's hosts compile
# the same program, but a busy or slower host can take minutes longer.
COMPILE_BARRIER_TIMEOUT_S = 1800
_barrier_numbers = itertools.count()


class StoppedByAnotherHost(cli_errors.RunStopped):
  """Another host's input error (named in that host's log) stopped every host at a saved step."""


class StopRequested:
  """Turns SIGTERM/SIGINT into a flag so the loop can save before exiting."""

  def __init__(self):
    self.signal = None
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def compiled_on_every_host(step_fn, state, batch):
  """The jitted step compiled for (state, batch); with several processes every host returns
  only when all have compiled it. CPU collectives across processes (gloo) give the other
  processes 30 s to join a program's first collective, so a host that still compiles when
  another starts the first step would otherwise fail that step ("Gloo context initialization
  failed: DEADLINE_EXCEEDED"). The barrier is the coordination service's, not a collective."""
  compiled = step_fn.lower(state, batch).compile()
  wait_for_every_host('compiled_step', COMPILE_BARRIER_TIMEOUT_S)
  return compiled


def wait_for_every_host(name: str, timeout_s: int) -> None:
  """A barrier of JAX's coordination service (no device collective, so no gloo deadline)."""
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(f'vclr_{name}_{next(_barrier_numbers)}',
                                        timeout=timeout_s)


def make_any_host(mesh: Mesh, axis: str = 'data') -> Callable[[int], jax.Array]:
  """code of this host -> a replicated scalar, the largest code of all hosts (async)."""
  sharding = NamedSharding(mesh, P(axis))
  local_devices = len(mesh.local_devices)
  reduce = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))

  def any_host(code: int) -> jax.Array:
    local = np.full((local_devices,), code, np.int32)
    return reduce(jax.make_array_from_process_local_data(sharding, local))

  return any_host


@dataclasses.dataclass
class LoopResult:
  state: Any
  last_metrics: dict[str, float]


def format_rate(steps_per_sec: float, batch_size: int, remaining_steps: int) -> str:
  eta = remaining_steps / steps_per_sec if steps_per_sec > 0 else float('inf')
  eta_text = time.strftime('%H:%M:%S', time.gmtime(eta)) if np.isfinite(eta) else '?'
  return (f'{steps_per_sec:.2f} steps/s, {steps_per_sec * batch_size:.1f} videos/s | '
          f'ETA {eta_text}')


def run(*, step_fn, state, batches: Iterator, manager, mesh: Mesh, start_step: int,
        total_steps: int, batch_size: int, log_every_steps: int,
        describe: Callable[[int, dict[str, float]], str], log: Callable[[str], None],
        writer=None, check_previous: Callable[[int, dict], None] | None = None,
        window_extras: Callable[[Any], dict[str, float]] | None = None,
        host_stop: Callable[[], BaseException | None] | None = None,
        profile: profiling.ProfileWindow | None = None) -> LoopResult:
  """Trains from ``start_step`` to ``total_steps``; returns the state, last logged means, stop.

  Args:
    step_fn: jitted ``(state, batch) -> (state, metrics)``; metrics are replicated scalars.
      It is compiled before the first step, and every host waits until all have compiled.
    describe: ``(step, window means) -> text`` of the log line, before the rate and ETA.
    check_previous: called with the previous step's number and metrics (still on the
      device) every step, e.g. to stop on non-finite steps; it raises to end the run.
    window_extras: ``state -> {name: value}`` added to each logged window.
    host_stop: ``() -> error or None``, polled every step: an error this host's input wants
      to end the run with. Every host saves the same step, then this host raises the error
      and the others StoppedByAnotherHost.
    profile: traces its window of steps (config.profile); stopped when the loop ends.
  """
  profile = profile or profiling.ProfileWindow.off()
  profile.check_start(start_step + 1)
  stop = StopRequested()
  quiet = _QuietAfterDiskFull()
  logging.get_absl_logger().addFilter(quiet)
  previous_hooks = sys.unraisablehook, sys.excepthook
  sys.unraisablehook = quiet.unraisablehook(sys.unraisablehook)
  sys.excepthook = quiet.excepthook(sys.excepthook)
  try:
    return _run(stop, step_fn=step_fn, state=state, batches=batches, manager=manager, mesh=mesh,
                start_step=start_step, total_steps=total_steps, batch_size=batch_size,
                log_every_steps=log_every_steps, describe=describe, log=log, writer=writer,
                check_previous=check_previous, window_extras=window_extras,
                host_stop=host_stop or (lambda: None), profile=profile)
  except Exception as error:  # pylint: disable=broad-except
    if cli_errors.is_disk_full(error):
      raise disk_full_error(manager, error) from error
    _finish(manager, writer)  # saves in flight complete before the error ends the run
    raise
  finally:
    profile.stop()
    stop.restore()
    logging.get_absl_logger().removeFilter(quiet)
    sys.unraisablehook, sys.excepthook = previous_hooks


class _QuietAfterDiskFull(logging.logging.Filter):
  """Drops Orbax's log of each ENOSPC (with its traceback) and the 'Event loop is closed'
  tracebacks that TensorStore's callbacks into a dead Orbax save loop report (through
  PyErr_WriteUnraisable or PyErr_Print, one per pending write; ~150 after one ENOSPC). The
  latter only follow a failed save, whose own error reaches the loop at the next save or
  wait, so nothing is lost: DiskFullError, or the other error, says it once."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    return not (cli_errors.is_disk_full(error)
                or os.strerror(errno.ENOSPC) in record.getMessage())

  @staticmethod
  def _dead_save_loop(error) -> bool:
    return isinstance(error, RuntimeError) and 'Event loop is closed' in str(error)

  def unraisablehook(self, previous):
    return lambda unraisable: (None if self._dead_save_loop(unraisable.exc_value)
                               else previous(unraisable))

  def excepthook(self, previous):
    return lambda kind, value, traceback: (None if self._dead_save_loop(value)
                                           else previous(kind, value, traceback))


def _finish(manager, writer) -> None:
  manager.wait_until_finished()
  if writer is not None:
    writer.flush()


def disk_full_error(manager, error: BaseException) -> cli_errors.DiskFullError:
  """What the full disk left behind. The writers are not closed: closing Orbax's manager
  while its threads still fail prints a traceback per pending write; the entry point exits at
  once instead (cli_errors.guard)."""
  directory = checkpointing.absolute(manager.directory)
  workdir = directory.parent
  steps = checkpointing.step_dirs(directory)
  if steps:
    last = max(steps)
    size = checkpointing.directory_bytes(steps[last])
    kept = (f'Checkpoint {last} ({steps[last]}) is intact; a checkpoint needs '
            f'{size / 2**20:.1f} MiB ({size} bytes).')
  else:
    kept = 'No checkpoint was completed; the run restarts from step 0.'
  where = getattr(error, 'filename', None) or workdir
  return cli_errors.DiskFullError(
      f'No space left on device while writing {where}.\n{kept}\n'
      f'{workdir}: free space and rerun to resume.')


def _run(stop: StopRequested, *, step_fn, state, batches: Iterator, manager, mesh: Mesh,
         start_step: int, total_steps: int, batch_size: int, log_every_steps: int,
         describe: Callable[[int, dict[str, float]], str], log: Callable[[str], None],
         writer, check_previous, window_extras, host_stop, profile) -> LoopResult:
  any_host = make_any_host(mesh)
  pending, last_metrics, previous, previous_stop = [], {}, None, None
  stop_code = _NO_STOP
  stopped_by = None
  window_start, window_steps = time.time(), 0
  for step in range(start_step + 1, total_steps + 1):
    profile.before_step(step, state)
    batch = next(batches)
    if step == start_step + 1:
      step_fn = compiled_on_every_host(step_fn, state, batch)
    state, metrics = step_fn(state, batch)
    profile.after_step(step, state)
    stop_now = any_host(_HOST_ERROR if host_stop() is not None
                        else _SIGNAL if stop.signal is not None else _NO_STOP)
    if check_previous is not None and previous is not None:
      check_previous(step - 1, previous)
    previous = metrics
    pending.append(metrics)
    window_steps += 1
    if step % log_every_steps == 0 or step == total_steps:
      host = jax.device_get(pending)  # waits for the steps in flight, so the rate is true
      means = {k: float(np.mean([float(m[k]) for m in host])) for k in host[0]}
      if window_extras is not None:
        means.update(window_extras(state))
      steps_per_sec = window_steps / (time.time() - window_start)
      means.update(steps_per_sec=steps_per_sec, videos_per_sec=steps_per_sec * batch_size)
      if writer is not None:
        writer.write_scalars(step, means)
      log(f'{describe(step, means)} | '
          f'{format_rate(steps_per_sec, batch_size, total_steps - step)}')
      last_metrics, pending = means, []
      window_start, window_steps = time.time(), 0
    checkpointing.save(manager, step, state)
    stop_code = int(previous_stop) if previous_stop is not None else _NO_STOP
    if stop_code == _HOST_ERROR:
      stopped_by = 'an input error' if host_stop() is not None else 'another host\'s input error'
    elif stop_code == _SIGNAL:
      stopped_by = stop.signal or 'a stop request from another host'
    elif manager.reached_preemption(step):
      stopped_by = 'preemption'
    if stopped_by:
      log(f'{stopped_by} received: every host saves step {step} and exits.')
      break
    previous_stop = stop_now
  checkpointing.save(manager, int(jax.device_get(state.step)), state, force=True)
  _finish(manager, writer)
  if not stopped_by:
    return LoopResult(state=state, last_metrics=last_metrics)
  saved = f'Step {step} of {manager.directory} is saved; a rerun resumes from it.'
  if stop_code == _HOST_ERROR:
    error = host_stop()
    if error is not None:
      raise type(error)(cli_errors.before_last_line(str(error), saved)) from error
    raise StoppedByAnotherHost(
        'Another host stopped the run because of an input error (its output names it).\n'
        f'{saved}\nRepair what that host names, then rerun the same command to resume.')
  raise cli_errors.RunStopped(f'The run stopped on {stopped_by}.\n{saved}\n'
                              'Rerun the same command to resume.')
