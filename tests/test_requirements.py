"""The accelerator requirement files resolve on top of requirements.txt without conflicts."""

import os
import re

import pytest

import pip_dry_runs

PIN = re.compile(r'^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s#]+)')


def pins(path):
  found = {}
  with open(os.path.join(pip_dry_runs.REPO, path)) as f:
    for line in f:
      match = PIN.match(line.strip())
      if match:
        found[match[1].lower().replace('_', '-')] = match[2]
  return found


@pytest.fixture(scope='module')
def dry_runs_dir(tmp_path_factory):
  """Where the test run's resolutions write (tests/conftest.py starts them), or new ones."""
  if pip_dry_runs.ENV_VAR in os.environ:
    return os.environ[pip_dry_runs.ENV_VAR]
  out_dir = str(tmp_path_factory.mktemp('pip_dry_runs'))
  pip_dry_runs.start(out_dir)
  return out_dir


@pytest.mark.parametrize('name, plugin', sorted(pip_dry_runs.ACCELERATOR_FILES.items()))
def test_accelerator_requirements_resolve_beside_the_cpu_pins(name, plugin, dry_runs_dir):
  status, install, stderr = pip_dry_runs.result(name, dry_runs_dir)
  assert status == 0, stderr[-3000:]
  base = pins('requirements.txt')
  assert pins(name)['jax'] == base['jax']
  installs = {item['metadata']['name'].lower().replace('_', '-'): item['metadata']['version']
              for item in install}
  # libtpu is pinned in requirements.txt itself (vclr_jax.plan), so it may be installed already.
  assert plugin in installs or plugin in base, installs
  if plugin.startswith('jax'):
    assert installs[plugin] == base['jax']  # the plugin of the pinned jax release
  # Nothing pinned in requirements.txt is replaced by another version.
  changed = {pkg: (base[pkg], version) for pkg, version in installs.items()
             if pkg in base and base[pkg] != version}
  assert not changed, changed
