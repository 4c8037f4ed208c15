"""Runs `python -m vclr_jax.main ARGS...` with its input failing at one step.

  python tests/input_fault_run.py STEP ARGS...

The host's batch iterator raises damage.DamagedDataError when the loop asks it for the batch
of step STEP, as the reader does when every example of a batch is damaged: an error from the
input in the middle of a run, while Orbax may still be writing a checkpoint in the background.
STEP 0: making the iterator raises it, before the loop, while the initial state's checkpoint
(step 0) may still be written.
"""

import runpy
import sys

from input_pipeline import damage
from vclr_jax import train

FAULT = 'The input failed at step {step} (injected by tests/input_fault_run.py).'
ADVICE = 'Repair the input and rerun the same command to resume.'


def main():
  fault_step, args = int(sys.argv[1]), sys.argv[2:]
  host_batches = train.host_batches

  def failing_batches(config, start_step):
    if fault_step == 0:
      raise damage.DamagedDataError(f'{FAULT.format(step=0)}\n{ADVICE}')
    return batches_until_the_fault(config, start_step)

  def batches_until_the_fault(config, start_step):
    for step, batch in enumerate(host_batches(config, start_step), start_step + 1):
      if step == fault_step:
        raise damage.DamagedDataError(f'{FAULT.format(step=step)}\n{ADVICE}')
      yield batch

  train.host_batches = failing_batches
  sys.argv = ['vclr_jax.main'] + args
  runpy.run_module('vclr_jax.main', run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
