"""Every stop the user must act on, from the command line as users run it: a short message whose
last line says what to do, a documented exit status, no traceback (unless VCLR_DEBUG=1), no
Orbax thread errors, and a workdir left as it was (a mistake found before training) or with a
complete checkpoint a rerun resumes from (a stop during training).

One tiny prepared dataset (train: 15 videos of 6 frames in 5 shards, test: 6 videos) and copies
of it with one defect each; the commands of one kind run side by side.
"""

import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import eval_fixtures
from conftest import FAST_COMPILE_FLAGS, NO_BLUR, tiny_config
from frame_folders import prepare_argv, write_frame_folders
from input_pipeline import prepare
from input_pipeline import records
from input_pipeline import split_index
from split_files import write_split_index
from test_input_damage import _damage
from vclr_jax import checkpointing
from vclr_jax import cli_errors
from vclr_jax import config_checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULT_RUN = os.path.join(REPO, 'tests', 'input_fault_run.py')
# absl's log lines (I1206 12:00:00.000 ...), what TensorFlow's native library prints on
# import and gloo's line on connecting the processes of a multi-process run: none is part of
# the message.
LOG_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d')
NATIVE_LOG_LINES = ('WARNING: All log messages before absl::InitializeLog()', 'I0000 00:00:',
                    'To enable the following instructions', '[Gloo] ')
ORBAX_THREAD_ERRORS = ('cannot schedule new futures', 'Exception in thread', 'Traceback')
STEP_LINE = re.compile(r'step (\d+)/(\d+) \| loss')
# 1 device; 15 videos at batch 4 is 3 steps an epoch, 12 in all.
TRAIN_FLAGS = [
    '--config=configs/demo.py', '--config.data.source=records',
    '--config.data.frame_size=(90, 120)',
    '--config.data.image_size=80', '--config.batch_size=4', '--config.queue_size=16',
    '--config.model.depth=10', '--config.model.width_multiplier=0.125', '--config.num_epochs=4',
    '--config.optim.warmup_epochs=1', '--config.log_every_steps=1',
    '--config.checkpoint.every_steps=2', '--config.checkpoint.async_save=True',
    '--config.data.cycle_length=2', '--config.data.shuffle_buffer=4',
    *[f'--config.{key}={value}' for key, value in NO_BLUR.items()],
]
TOTAL_STEPS = 12


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
  """{'clean', 'mismatch' (train/ holds a copy of test/), 'damaged' (a truncated shard)}."""
  root = tmp_path_factory.mktemp('stops')
  write_frame_folders(str(root / 'videos'), [6] * 15, 'train')
  write_frame_folders(str(root / 'videos'), [6] * 6, 'test')
  clean = str(root / 'clean')
  for split in ('train', 'test'):
    prepare.main(prepare_argv(str(root / 'videos'), clean, split=split))
  mismatch = str(root / 'mismatch')
  shutil.copytree(clean, mismatch)
  shutil.rmtree(os.path.join(mismatch, 'train'))
  shutil.copytree(os.path.join(clean, 'test'), os.path.join(mismatch, 'train'))
  damaged = str(root / 'damaged')
  shutil.copytree(clean, damaged)
  _damage(records.read_index(damaged, 'train')['shards'][1]['path'], 'truncated')
  return {'clean': clean, 'mismatch': mismatch, 'damaged': damaged}


def launch(args, program=('-m', 'vclr_jax.main'), **extra_env):
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE_FLAGS, PYTHONUNBUFFERED='1', PYTHONPATH=REPO)
  env.update(extra_env)
  if cli_errors.DEBUG_ENV not in extra_env:
    env.pop(cli_errors.DEBUG_ENV, None)
  return subprocess.Popen([sys.executable, *program, *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=600):
  try:
    out, err = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    raise
  return process.returncode, out + err


def message(output):
  """The lines that are not log lines of absl or of a native library."""
  return [line for line in output.splitlines()
          if line.strip() and not LOG_LINE.match(line) and not line.startswith(NATIVE_LOG_LINES)]


def assert_short_stop(name, code, output, status, advice):
  lines = message(output)
  assert code == status, (name, code, output[-4000:])
  assert 1 <= len(lines) <= cli_errors.MAX_LINES, (name, lines)
  assert lines[0].startswith('Error '), (name, lines)
  assert advice in lines[-1], (name, lines)
  for text in ORBAX_THREAD_ERRORS:
    assert text not in output, (name, text, output[-4000:])


def listing(folder):
  return sorted((os.path.relpath(os.path.join(root, name), folder), os.path.getmtime(
      os.path.join(root, name))) for root, _, names in os.walk(folder) for name in names)


def steps_on_disk(workdir):
  return checkpointing.step_dirs(os.path.join(workdir, checkpointing.CHECKPOINT_DIR))


def restorable(workdir, step):
  """True if checkpoint ``step`` restores whole (onto one device of this process, whatever
  devices and processes saved it) and holds that step."""
  path = os.path.join(workdir, checkpointing.CHECKPOINT_DIR, str(step), 'default')
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  return int(np.asarray(checkpointer.restore(path, target)['step'])) == step


def test_mistakes_in_the_data_stop_before_anything_is_written(datasets, tmp_path):
  run = eval_fixtures.make_encoder_run(tmp_path / 'run', tiny_config())
  untouched = tmp_path / 'existing_run'
  untouched.mkdir()
  (untouched / 'notes.txt').write_text('kept')
  before = listing(untouched)
  no_checkpoint = tmp_path / 'no_checkpoint'
  checkpointing.write_run_config(str(no_checkpoint), tiny_config())
  eval_records = [f'--config.data.records_dir={datasets["mismatch"]}']
  # name: (module and flags, what the last line advises)
  cases = {
      'split mismatch': (['vclr_jax.main', *TRAIN_FLAGS,
                          f'--config.data.records_dir={datasets["mismatch"]}',
                          f'--workdir={tmp_path / "new_run"}'],
                         'prepare the split again'),
      'short videos': (['vclr_jax.main', *TRAIN_FLAGS, '--config.model.architecture=r3d_18',
                        '--config.data.clip_length=2',
                        f'--config.data.records_dir={datasets["clean"]}', f'--workdir={untouched}'],
                       'or shorten the clips'),
      'missing split': (['vclr_jax.main', *TRAIN_FLAGS, '--config.data.split=val',
                         f'--config.data.records_dir={datasets["clean"]}',
                         f'--workdir={tmp_path / "new_run"}'], 'or fix config.data.split'),
      'evaluation split mismatch': (['vclr_jax.evaluate', '--config=configs/eval_synthetic.py',
                                     *eval_records, f'--workdir={run}', '--eval=linear'],
                                    'prepare the split again'),
      'fine-tuning without checkpoint': (['vclr_jax.evaluate',
                                          '--config=configs/finetune_synthetic.py',
                                          f'--config.data.records_dir={datasets["clean"]}',
                                          f'--workdir={no_checkpoint}', '--eval=finetune'],
                                         'Pretrain it first'),
  }
  processes = {name: launch(command[1:], program=('-m', command[0]))
               for name, (command, _) in cases.items()}
  debug = launch(cases['split mismatch'][0][1:], **{cli_errors.DEBUG_ENV: '1'})
  for name, process in processes.items():
    code, output = finish(process)
    assert_short_stop(name, code, output, cli_errors.EXIT_USER_ERROR, cases[name][1])
  assert not (tmp_path / 'new_run').exists()
  assert listing(untouched) == before
  assert not (tmp_path / 'run' / 'eval').exists()
  assert not (no_checkpoint / 'finetune').exists()
  code, output = finish(debug)
  assert code != 0 and 'Traceback' in output and 'ConfigError' in output


def test_the_index_checks_name_every_problem(tmp_path):
  config = tiny_config(**{'data.source': 'records', 'data.records_dir': str(tmp_path)})
  write_split_index(tmp_path, 'train', [6] * 4 + [5], num_shards=2)
  problems = config_checks.data_problems(
      config.data, [('config.data.split', 'train', config_checks.VCLR_READER)], 3, (1, 1))
  assert len(problems) == 1 and '2 shards for 3 hosts' in problems[0], problems
  problems = config_checks.data_problems(
      config.data, [('config.data.split', 'train', config_checks.VCLR_READER)], 2, (1, 1))
  assert len(problems) == 1 and '1 of the 5 videos' in problems[0], problems
  assert '--min_frames=6' in problems[0]
  # Evaluation reads whole records: any length, any number of shards per host.
  assert not config_checks.data_problems(
      config.data, [('config.data.test_split', 'train', config_checks.EVAL_READER)], 3)
  write_split_index(tmp_path, 'empty', [])
  write_split_index(tmp_path, 'test', [6] * 3, named='train')
  os.remove(os.path.join(tmp_path, 'train', 'shard-00001-of-00002.frames.npz'))
  config.data.frame_size = (0, 90)
  problems = config_checks.data_problems(
      config.data, [(f'config.data.{split}', split, config_checks.VCLR_READER)
                    for split in ('empty', 'test', 'train', 'val')], 1, (1, 1))
  assert [p.split(' ', 1)[0] for p in problems] == [
      'config.data.frame_size=(0,', "config.data.empty='empty':", "config.data.test='test':",
      '1', "config.data.val='val':"], problems
  assert 'holds no videos' in problems[1] and 'of split \'train\'' in problems[2]
  assert 'have no frame index' in problems[3] and 'prepared splits in' in problems[4]
  assert "['empty', 'test', 'train']" in problems[4]
  with pytest.raises(split_index.SplitMismatchError):
    split_index.read_split_index(str(tmp_path), 'test')


def read_until_trained(process, steps, output_lines):
  """Reads the process's stderr until it has logged ``steps`` steps (or ended)."""
  for line in process.stderr:
    output_lines.append(line)
    match = STEP_LINE.search(line)
    if match and int(match[1]) >= steps:
      return


def test_stops_during_training_save_a_step_and_say_what_to_do(datasets, tmp_path):
  workdirs = {name: str(tmp_path / name)
              for name in ('damaged', 'fault', 'fault at the start', 'diverged', 'sigterm')}
  clean = f'--config.data.records_dir={datasets["clean"]}'
  processes = {
      'sigterm': launch([*TRAIN_FLAGS, clean, f'--workdir={workdirs["sigterm"]}']),
      # Its own step: the learning rate is a constant of the compiled schedule.
      'diverged': launch([*TRAIN_FLAGS, clean, '--config.optim.base_lr=1e30',
                          '--config.max_nonfinite_in_a_row=2',
                          f'--workdir={workdirs["diverged"]}']),
  }
  sigterm_lines = []
  # Once the SIGTERM run has trained a step, its compiled state initialisation and step are
  # in the suite's compilation cache: the runs of the same step start from there instead of
  # compiling it side by side.
  read_until_trained(processes['sigterm'], 1, sigterm_lines)
  processes.update({
      'damaged': launch([*TRAIN_FLAGS, f'--config.data.records_dir={datasets["damaged"]}',
                         '--config.data.max_skipped_fraction=0',
                         f'--workdir={workdirs["damaged"]}']),
      'fault': launch(['5', *TRAIN_FLAGS, clean, f'--workdir={workdirs["fault"]}'],
                      program=(FAULT_RUN,)),
      'fault at the start': launch(['0', *TRAIN_FLAGS, clean,
                                    f'--workdir={workdirs["fault at the start"]}'],
                                   program=(FAULT_RUN,)),
  })
  read_until_trained(processes['sigterm'], 2, sigterm_lines)
  processes['sigterm'].send_signal(signal.SIGTERM)
  results = {name: finish(process) for name, process in processes.items()}
  results['sigterm'] = (results['sigterm'][0], ''.join(sigterm_lines) + results['sigterm'][1])

  code, output = results['damaged']
  assert_short_stop('damaged', code, output, cli_errors.EXIT_STOPPED, 'max_skipped_fraction')
  saved = int(re.search(r'Step (\d+) of \S+ is saved; a rerun resumes from it\.', output)[1])
  assert max(steps_on_disk(workdirs['damaged'])) == saved and restorable(workdirs['damaged'], saved)
  assert 'shard-00001-of-00005.tfrecord' in output

  code, output = results['diverged']
  assert_short_stop('diverged', code, output, cli_errors.EXIT_STOPPED,
                    'python -m vclr_jax.main')
  assert '--config.checkpoint.resume_step=' in message(output)[-1]

  code, output = results['sigterm']
  assert_short_stop('sigterm', code, output, cli_errors.EXIT_STOPPED,
                    'Rerun the same command to resume.')
  saved = int(re.search(r'Step (\d+) of \S+ is saved', output)[1])
  assert 2 <= saved < TOTAL_STEPS and max(steps_on_disk(workdirs['sigterm'])) == saved
  assert 'The run stopped on SIGTERM.' in output

  # Before the loop, while the initial state was saved in the background.
  code, output = results['fault at the start']
  assert_short_stop('fault at the start', code, output, cli_errors.EXIT_STOPPED,
                    'rerun the same command')
  assert steps_on_disk(workdirs['fault at the start']).keys() == {0}
  assert restorable(workdirs['fault at the start'], 0)

  # The input failed at step 5 while checkpoint 4 was written in the background: the message,
  # then checkpoint 4 complete; the rerun resumes from it and finishes.
  code, output = results['fault']
  assert_short_stop('fault', code, output, cli_errors.EXIT_STOPPED, 'rerun the same command')
  assert 'The input failed at step 5' in output
  assert max(steps_on_disk(workdirs['fault'])) == 4 and restorable(workdirs['fault'], 4)
  code, output = finish(launch([*TRAIN_FLAGS, clean, f'--workdir={workdirs["fault"]}']))
  assert code == 0, output[-4000:]
  assert 'Resumed from' in output and 'at step 4' in output, output[-4000:]
  assert max(steps_on_disk(workdirs['fault'])) == TOTAL_STEPS
  assert not any(text in output for text in ORBAX_THREAD_ERRORS), output[-4000:]
