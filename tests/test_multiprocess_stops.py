"""The stops of tests/test_stops.py on a 2-process run (python -m vclr_jax.main --distributed on
loopback, one CPU device each) where only one host's data has the problem: that host names
it, the other says another host stopped the run, both exit with the same status, and a stop
during training leaves the same saved step for both.

Process 1 reads a copy of the records with the defect; process 0 the clean ones. With 5
shards, process 1 reads shards 1 and 3, so the truncated shard 1 is its own.
"""

import os
import re

from conftest import free_port
from test_stops import TRAIN_FLAGS, assert_short_stop, datasets, finish, launch, steps_on_disk
from test_stops import restorable
from vclr_jax import cli_errors

__all__ = ['datasets']  # the records fixture, shared with tests/test_stops.py


def launch_pair(workdir, records_dirs, *flags):
  port = free_port()
  common = [*TRAIN_FLAGS, *flags, f'--workdir={workdir}', '--distributed',
            f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2']
  # No shared compilation cache: one process finding its step there while the other still
  # compiles can miss gloo's deadline at the first collective (tests/test_multiprocess.py).
  return [launch([*common, f'--config.data.records_dir={records_dir}', f'--process_id={i}'],
                 JAX_COMPILATION_CACHE_DIR='')
          for i, records_dir in enumerate(records_dirs)]


def test_a_problem_on_one_host_stops_both_with_one_status(datasets, tmp_path):
  mismatch = launch_pair(tmp_path / 'mismatch_run', [datasets['clean'], datasets['mismatch']])
  damaged = launch_pair(tmp_path / 'damaged_run', [datasets['clean'], datasets['damaged']],
                        '--config.data.max_skipped_fraction=0')
  (code0, out0), (code1, out1) = (finish(p) for p in mismatch)
  # Found before training: status 2 on both, nothing written.
  assert_short_stop('mismatch, host 1', code1, out1, cli_errors.EXIT_USER_ERROR,
                    'prepare the split again')
  assert_short_stop('mismatch, host 0', code0, out0, cli_errors.EXIT_USER_ERROR,
                    'Fix what that host lists and rerun.')
  assert 'Another host (process 1) found problems' in out0
  assert not (tmp_path / 'mismatch_run').exists()

  (code0, out0), (code1, out1) = (finish(p) for p in damaged)
  assert_short_stop('damaged, host 1', code1, out1, cli_errors.EXIT_STOPPED,
                    'max_skipped_fraction')
  assert 'shard-00001-of-00005.tfrecord' in out1
  assert_short_stop('damaged, host 0', code0, out0, cli_errors.EXIT_STOPPED,
                    'rerun the same command to resume')
  assert 'Another host stopped the run because of an input error' in out0
  saved = [re.search(r'Step (\d+) of \S+ is saved; a rerun resumes from it\.', out)
           for out in (out0, out1)]
  assert saved[0] and saved[1] and saved[0][1] == saved[1][1], (out0[-3000:], out1[-3000:])
  step = int(saved[0][1])
  workdir = str(tmp_path / 'damaged_run')
  assert max(steps_on_disk(workdir)) == step and restorable(workdir, step)
