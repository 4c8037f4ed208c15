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


@pytest.mark.parametrize('name, plugin', [('requirements-cuda.txt', 'jax-cuda12-plugin'),
                                          ('requirements-tpu.txt', 'libtpu')])
def test_accelerator_requirements_resolve_beside_the_cpu_pins(name, plugin, tmp_path):
  report = tmp_path / 'report.json'
  result = subprocess.run([sys.executable, '-m', 'pip', 'install', '--dry-run', '-q',
                           '--report', str(report), '-r', name], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
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
