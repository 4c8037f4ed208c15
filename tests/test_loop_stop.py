"""Two hosts in vclr_jax/training_loop.py: an input error on one stops both at the same saved
step, and a host that compiles the step much later than the other does not fail the run.

Two real processes (jax.distributed on loopback, 2 CPU devices each) run the training loop on a
toy step; process 1's input reports an error from step 3 on, as damage.SkippingBatches does
past config.data.max_skipped_fraction.
"""

import os
import re
import subprocess
import sys

from conftest import free_port

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'loop_stop_worker.py')


# Longer than the 30 s that gloo gives the other processes to join a program's first collective.
SLOW_COMPILE_S = 35


def run_pair(workdir, error_from_step, compile_delay_s=0):
  port = free_port()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  processes = [subprocess.Popen([sys.executable, WORKER, str(port), str(i), str(workdir),
                                 str(error_from_step), str(compile_delay_s)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env) for i in range(2)]
  outputs = []
  for process in processes:
    try:
      outputs.append(process.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      raise
    assert process.returncode == 0, outputs[-1][-3000:]
  return outputs


def test_input_error_on_one_host_stops_every_host_at_one_saved_step(tmp_path):
  outputs = run_pair(tmp_path / 'run', error_from_step=3)
  stops = [re.search(r'received: every host saves step (\d+)', out) for out in outputs]
  assert all(stops), outputs
  step = int(stops[0][1])
  assert int(stops[1][1]) == step and 3 <= step < 100
  saved = re.compile(rf'Step {step} of \S+ is saved; a rerun resumes from it\.')
  # The error's last line (what to do) stays last; the saved step comes before it.
  assert re.search(rf'STOPPED InputError {saved.pattern}\nshard 3 of process 1 is damaged\.$',
                   outputs[1], re.M), outputs[1]
  assert saved.search(outputs[1]), outputs[1]
  assert 'STOPPED StoppedByAnotherHost Another host stopped the run' in outputs[0]
  assert saved.search(outputs[0]), outputs[0]
  kept = [re.search(r'SAVED \[(.*)\]', out)[1] for out in outputs]
  assert kept[0] == kept[1] and kept[0].endswith(str(step)), kept


def test_a_host_compiling_longer_than_gloos_deadline_does_not_fail_the_first_step(tmp_path):
  # Without the barrier after compiling, process 0 runs step 1 while process 1 still traces,
  # and fails with "Gloo context initialization failed: DEADLINE_EXCEEDED".
  outputs = run_pair(tmp_path / 'run', error_from_step=10**6, compile_delay_s=SLOW_COMPILE_S)
  for output in outputs:
    assert 'STOPPED' not in output and re.search(r'SAVED \[.*\b100\]', output), output[-3000:]
