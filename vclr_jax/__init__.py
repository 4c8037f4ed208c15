"""vclr_jax: VCLR self-supervised video representation learning in JAX/Flax."""

import glob as _glob
import importlib.metadata as _metadata
import importlib.util as _importlib_util
import os as _os
import sys as _sys

_GOOGLE_PCI_VENDOR = '0x1ae0'  # the vendor of every TPU chip on a TPU VM's PCI bus


def _has_tpu_chip() -> bool:
  for path in _glob.glob('/sys/bus/pci/devices/*/vendor'):
    with open(path) as vendor:
      if vendor.read().strip() == _GOOGLE_PCI_VENDOR:
        return True
  return False


def _skip_absent_tpu() -> None:
  """On a machine with libtpu installed (requirements.txt brings it for vclr_jax.plan) but no
  TPU chip and no other accelerator plugin, JAX would load libtpu at start-up only to fail,
  printing libtpu's warnings on every run; JAX_PLATFORMS=cpu skips that probe. vclr_jax.plan
  still loads libtpu for its deviceless compiles. An explicit JAX_PLATFORMS is kept."""
  if 'JAX_PLATFORMS' in _os.environ or _importlib_util.find_spec('libtpu') is None:
    return
  if _importlib_util.find_spec('jax_plugins') is not None or \
      _metadata.entry_points(group='jax_plugins') or _has_tpu_chip():
    return
  _os.environ['JAX_PLATFORMS'] = 'cpu'
  if 'jax' in _sys.modules:  # imported first: JAX read the environment already
    _sys.modules['jax'].config.update('jax_platforms', 'cpu')


_skip_absent_tpu()

# TensorFlow's import prints lines that say nothing to a user (oneDNN, absl's log init): every
# entry point filters them, wherever TensorFlow gets imported (VCLR_DEBUG=1 keeps them).
from vclr_jax import quiet_logs as _quiet_logs  # pylint: disable=g-import-not-at-top

_quiet_logs.quiet_tensorflow_import()
