"""`pip install --dry-run` of each accelerator requirement file, started early and read later.

The resolutions spend about 80 s waiting on the package index. tests/conftest.py starts them
when the test run begins (`start`), so that the wait overlaps the CPU-bound tests, and
tests/test_requirements.py reads their results (`result`).

  python tests/pip_dry_runs.py REQUIREMENTS_FILE OUT_DIR   # one resolution, as `start` runs it
"""

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATOR_FILES = {'requirements-cuda.txt': 'jax-cuda12-plugin', 'requirements-tpu.txt': 'libtpu'}
ENV_VAR = 'VCLR_JAX_PIP_DRY_RUNS'  # the folder of the test run's resolutions


def start(out_dir):
  """Starts one background resolution per accelerator file; each writes its files in out_dir."""
  for name in ACCELERATOR_FILES:
    subprocess.Popen([sys.executable, os.path.abspath(__file__), name, out_dir], cwd=REPO,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)


def result(name, out_dir, timeout=900):
  """(exit status, the --report's install list, stderr) of the resolution of ``name``."""
  status_path = os.path.join(out_dir, f'{name}.status')
  deadline = time.time() + timeout
  while not os.path.exists(status_path):
    if time.time() > deadline:
      raise TimeoutError(f'pip --dry-run of {name} gave no result within {timeout} s')
    time.sleep(1)
  with open(status_path) as f:
    status = int(f.read())
  with open(os.path.join(out_dir, f'{name}.stderr')) as f:
    stderr = f.read()
  installs = []
  if status == 0:
    with open(os.path.join(out_dir, f'{name}.report.json')) as f:
      installs = json.load(f)['install']
  return status, installs, stderr


def main():
  name, out_dir = sys.argv[1], sys.argv[2]
  with open(os.path.join(out_dir, f'{name}.stderr'), 'w') as stderr:
    status = subprocess.call(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '-q', '--report',
         os.path.join(out_dir, f'{name}.report.json'), '-r', name],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
  # Written last, by rename, so a reader never sees a partial status.
  with open(os.path.join(out_dir, f'{name}.status.tmp'), 'w') as f:
    f.write(str(status))
  os.replace(os.path.join(out_dir, f'{name}.status.tmp'), os.path.join(out_dir, f'{name}.status'))


if __name__ == '__main__':
  main()
