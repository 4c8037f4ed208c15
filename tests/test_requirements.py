"""The accelerator requirement files resolve on top of requirements.txt without conflicts."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = re.compile(r'^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s#]+)')


def pins(path):
  found = {}
  with open(os.path.join(REPO, path)) as f:
    for line in f:
      match = PIN.match(line.strip())
      if match:
        found[match[1].lower().replace('_', '-')] = match[2]
  return found


ACCELERATOR_FILES = {'requirements-cuda.txt': 'jax-cuda12-plugin', 'requirements-tpu.txt': 'libtpu'}


@pytest.fixture(scope='module')
def dry_runs(tmp_path_factory):
  """Both pip resolutions at once (each spends most of its time waiting on the index)."""
  runs = {}
  for name in ACCELERATOR_FILES:
    report = tmp_path_factory.mktemp('pip') / 'report.json'
    runs[name] = (subprocess.Popen(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '-q', '--report', str(report),
         '-r', name], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True), report)
  yield runs
  for process, _ in runs.values():
    process.kill()


@pytest.mark.parametrize('name, plugin', sorted(ACCELERATOR_FILES.items()))
def test_accelerator_requirements_resolve_beside_the_cpu_pins(name, plugin, dry_runs):
  process, report = dry_runs[name]
  _, stderr = process.communicate(timeout=900)
  assert process.returncode == 0, stderr[-3000:]
  base = pins('requirements.txt')
  assert pins(name)['jax'] == base['jax']
  installs = {item['metadata']['name'].lower().replace('_', '-'): item['metadata']['version']
              for item in json.loads(report.read_text())['install']}
  assert plugin in installs, installs
  if plugin.startswith('jax'):
    assert installs[plugin] == base['jax']  # the plugin of the pinned jax release
  # Nothing pinned in requirements.txt is replaced by another version.
  changed = {pkg: (base[pkg], version) for pkg, version in installs.items()
             if pkg in base and base[pkg] != version}
  assert not changed, changed
