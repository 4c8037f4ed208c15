"""A quiet start: the entry points print none of TensorFlow's import lines ("oneDNN custom
operations are on", "All log messages before absl::InitializeLog()"); VCLR_DEBUG=1 keeps them."""

import os
import subprocess
import sys

from vclr_jax import cli_errors
from vclr_jax import quiet_logs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = quiet_logs.TENSORFLOW_IMPORT_NOISE


def run_cli(args, debug=False):
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', cli_errors.DEBUG_ENV)}
  if debug:
    env[cli_errors.DEBUG_ENV] = '1'
  result = subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  return result.stdout + result.stderr


def test_the_filter_drops_only_the_noise_written_to_file_descriptor_2(capfd):
  def native_import():
    os.write(2, f'WARNING: {NOISE[0]}\nI0000 port.cc:153] {NOISE[1]}. You may see\n'.encode())
    os.write(2, b'a real warning\n')
    return 7

  # pylint: disable-next=protected-access
  assert quiet_logs._run_with_filtered_stderr(native_import) == 7
  assert capfd.readouterr().err == 'a real warning\n'


def test_the_debug_switch_is_the_error_helpers():
  assert quiet_logs.DEBUG_ENV == cli_errors.DEBUG_ENV


def test_entry_points_that_import_tensorflow_start_quietly(tmp_path):
  # vclr_jax.plots imports TensorFlow through TensorBoard's event reader; input_pipeline.verify
  # imports it at its top. Both then stop on a user's mistake.
  plots = run_cli(['vclr_jax.plots', f'--workdir={tmp_path}'])
  verify = run_cli(['input_pipeline.verify', f'--records={tmp_path / "missing"}'])
  debug = run_cli(['input_pipeline.verify', f'--records={tmp_path / "missing"}'], debug=True)
  # TensorFlow does print them here, so their absence below means something.
  assert all(text in debug for text in NOISE), debug
  for output in (plots, verify):
    assert not any(text in output for text in NOISE), output
  assert 'No scalars in the event files' in plots
  assert f'--records={tmp_path / "missing"} is not a folder' in verify
