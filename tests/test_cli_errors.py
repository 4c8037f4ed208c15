"""Short errors: a user's mistake at any entry point gives at most 5 lines on stderr,
exit status 2, and a last line naming the key or path; a bad config writes nothing."""

import errno
import os
import subprocess
import sys

import pytest

from conftest import tiny_config
from vclr_jax import cli_errors
from vclr_jax import config_checks
from vclr_jax.models import video3d
from vclr_jax.models.vclr import has_batch_norm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TensorFlow's native library prints on import whatever happens next (it ignores
# TF_CPP_MIN_LOG_LEVEL); not part of the error, so not counted.
TF_IMPORT_BANNER = ('WARNING: All log messages before absl::InitializeLog()', 'I0000 00:00:',
                    'To enable the following instructions')


def _stderr_lines(text):
  return [line for line in text.splitlines()
          if line.strip() and not line.startswith(TF_IMPORT_BANNER)]


def test_every_entry_point_turns_user_mistakes_into_short_errors(tmp_path):
  demo = '--config=configs/demo.py'
  bad_workdir = tmp_path / 'bad_config_run'
  empty_run = tmp_path / 'empty_run'
  (empty_run / 'checkpoints').mkdir(parents=True)
  (empty_run / 'config.json').write_text('{}')
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  # (command, text the last line must contain)
  cases = {
      'unknown key': (['vclr_jax.main', demo, f'--workdir={tmp_path}/w',
                       '--config.data.recods_dir=/data'], '--config.data.recods_dir'),
      'missing config': (['vclr_jax.main', '--config=configs/no_such.py',
                          f'--workdir={tmp_path}/w'], 'configs/no_such.py'),
      'wrong value': (['vclr_jax.main', demo, f'--workdir={tmp_path}/w',
                       '--config.batch_size=abc'], '--config.batch_size'),
      'bad config': (['vclr_jax.main', demo, f'--workdir={bad_workdir}',
                      '--config.data.source=in_memory', '--config.model.key_bn=shufle',
                      '--config.batch_size=0', f'--config.init_from={tmp_path}/missing'],
                     f'{tmp_path}/missing'),
      'no checkpoint': (['vclr_jax.export', f'--workdir={empty_run}',
                         f'--out={tmp_path}/r.pth'], str(empty_run)),
      'evaluate missing run': (['vclr_jax.evaluate', '--config=configs/eval_synthetic.py',
                                f'--workdir={tmp_path}/no_run', '--eval=features'],
                               f'{tmp_path}/no_run'),
      'prepare missing folder': (['input_pipeline.prepare', '--source=list',
                                  f'--root={tmp_path}/no_videos', '--splits=train',
                                  f'--out={tmp_path}/records'], f'{tmp_path}/no_videos'),
      'synthetic unwritable': (['input_pipeline.synthetic', f'--out={a_file}/videos'],
                               str(a_file)),
  }
  env = dict(os.environ, XLA_FLAGS='', PYTHONUNBUFFERED='1')
  env.pop(cli_errors.DEBUG_ENV, None)

  def launch(command, **extra_env):
    return subprocess.Popen([sys.executable, '-m', *command], cwd=REPO, env=dict(env, **extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  processes = {name: launch(command) for name, (command, _) in cases.items()}
  debug = launch(cases['unknown key'][0], **{cli_errors.DEBUG_ENV: '1'})
  stderr = {}
  for name, process in processes.items():
    stderr[name] = process.communicate(timeout=300)[1]
    lines = _stderr_lines(stderr[name])
    assert process.returncode == cli_errors.EXIT_USER_ERROR, (name, stderr[name][-3000:])
    assert 1 <= len(lines) <= cli_errors.MAX_LINES, (name, stderr[name])
    assert cases[name][1] in lines[-1], (name, lines)
    assert 'Traceback' not in stderr[name], name
  assert not bad_workdir.exists()  # checked before anything is written
  assert "config.model.key_bn='shufle'" in stderr['bad config']  # every problem at once
  assert 'config.batch_size=0 must be positive' in stderr['bad config']
  # The suggestion as text, not as an escaped repr; VCLR_DEBUG=1 shows the traceback.
  assert 'Did you mean "records_dir" instead of "recods_dir"?' in stderr['unknown key']
  assert '\\n' not in stderr['unknown key'] and "\\'" not in stderr['unknown key']
  assert 'Traceback' in debug.communicate(timeout=300)[1] and debug.returncode != 0


def test_guard_shortens_user_errors_and_keeps_bugs(capsys, monkeypatch):
  monkeypatch.delenv(cli_errors.DEBUG_ENV, raising=False)

  def fails(error):
    raise error

  with pytest.raises(SystemExit) as exit_info:
    cli_errors.guard(fails, cli_errors.ConfigError([f'problem {i}' for i in range(9)]))
  assert exit_info.value.code == cli_errors.EXIT_USER_ERROR
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == cli_errors.MAX_LINES and lines[-1] == 'problem 8'
  assert all(f'problem {i}' in '\n'.join(lines) for i in range(9))  # folded, none lost
  with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
    cli_errors.guard(fails, ZeroDivisionError('division by zero'))
  monkeypatch.setenv(cli_errors.DEBUG_ENV, '1')
  with pytest.raises(FileNotFoundError):
    cli_errors.guard(fails, FileNotFoundError('x'))


def test_disk_full_is_recognised_through_wrapping_libraries():
  enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/run/checkpoints/6')
  wrapped = ValueError('tensorstore write failed')
  wrapped.__cause__ = enospc
  assert cli_errors.is_disk_full(wrapped)
  assert cli_errors.is_disk_full(ValueError('OUT_OF_RANGE: No space left on device [path=x]'))
  assert not cli_errors.is_disk_full(OSError(errno.EACCES, os.strerror(errno.EACCES)))


def test_validate_config_lists_every_problem_at_once():
  config = tiny_config(**{'model.key_bn': 'shufle', 'model.compute_dtype': 'fp16',
                          'queue_size': 20, 'checkpoint.every_steps': 0,
                          'data.source': 'records', 'data.records_dir': '/no/such/records'})
  with pytest.raises(cli_errors.ConfigError) as error:
    config_checks.validate_config(config, num_devices=8, num_processes=1)
  problems = error.value.problems
  for key in ('model.key_bn', 'model.compute_dtype', 'queue_size=20', 'checkpoint.every_steps',
              'data.records_dir=/no/such/records'):
    assert sum(f'config.{key}' in p for p in problems) == 1, (key, problems)
  assert len(problems) == 5
  # Divisibility over devices and hosts: batch 8 on 3 devices and 3 hosts.
  with pytest.raises(cli_errors.ConfigError) as error:
    config_checks.validate_config(tiny_config(), num_devices=3, num_processes=3)
  assert len(error.value.problems) == 2
  assert any('3 hosts' in p for p in error.value.problems)
  assert any('number of devices (3)' in p for p in error.value.problems)
  config_checks.validate_config(tiny_config(), num_devices=8, num_processes=1)
  # The enum table is the code's own: every BN mode the step knows is accepted (on one
  # device: bn_batching='reference' shuffles B = 8 frames per key pass, too few over 8).
  for key, allowed in config_checks.choices().items():
    for value in allowed:
      # float64 needs JAX_ENABLE_X64, reported as a problem of its own; data.source='tfds' a
      # built dataset (tests/test_tfds.py), 'records' prepared ones (tests/test_stops.py).
      # 3D backbones encode clips (S3D: 5 frames or more); a ViT takes only the default
      # BatchNorm settings (tiny_config sets BN groups).
      if value not in ('float64', 'tfds', 'records'):
        needed = {'data.clip_length': 5} if value in video3d.ARCHITECTURES else {}
        if key == 'model.architecture' and not has_batch_norm(value):
          needed = {f'model.{name}': bn for name, bn in config_checks.BN_DEFAULTS.items()}
        config = tiny_config(**{key: value, 'data.records_dir': REPO, **needed})
        config_checks.validate_config(config, 1, 1)
