"""Keeps the output of the entry points readable (no TensorFlow, no JAX, nothing of the project).

- TensorFlow's native libraries print, on import, "WARNING: All log messages before
  absl::InitializeLog() is called are written to STDERR", "oneDNN custom operations are on ..."
  (twice) and the CPU instructions it was not built for, whatever the program does next.
  quiet_tensorflow_import() drops exactly those lines from stderr while TensorFlow is first
  imported, wherever that import happens, and sets TF_CPP_MIN_LOG_LEVEL=1 (TensorFlow's own
  INFO lines off, warnings kept) unless it is set. The lines are filtered rather than switched
  off with TF_ENABLE_ONEDNN_OPTS=0, which would change TensorFlow's kernels.
- quiet_library_logs() drops Orbax's per-checkpoint INFO lines and JAX's list of platforms it
  did not find.

VCLR_DEBUG=1 keeps everything.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import tempfile

from absl import logging

DEBUG_ENV = 'VCLR_DEBUG'  # cli_errors.DEBUG_ENV; tests/test_quiet_start.py checks they agree
TENSORFLOW = 'tensorflow'
# The lines TensorFlow's import prints whatever happens next (substrings).
TENSORFLOW_IMPORT_NOISE = (
    'All log messages before absl::InitializeLog() is called are written to STDERR',
    'oneDNN custom operations are on',
)


def _debug() -> bool:
  return os.environ.get(DEBUG_ENV, '') not in ('', '0')


def _run_with_filtered_stderr(function, noise=TENSORFLOW_IMPORT_NOISE):
  """Runs ``function`` with file descriptor 2 captured (native code writes there), then writes
  the captured lines back to stderr, leaving out those that contain one of ``noise``."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      return function()
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().decode(errors='replace').splitlines(True)
              if not any(text in line for text in noise)]
      if kept:
        sys.stderr.write(''.join(kept))
        sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
  """Wraps TensorFlow's loader: its module runs with the import noise filtered out."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    module.__loader__ = self._loader
    _run_with_filtered_stderr(lambda: self._loader.exec_module(module))

  def __getattr__(self, name):
    return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """Finds the tensorflow package through the other finders and wraps its loader (libraries
  probe with importlib.util.find_spec before they import, so every lookup is answered)."""

  def find_spec(self, fullname, path, target=None):
    if fullname != TENSORFLOW:
      return None
    for finder in sys.meta_path:
      if finder is self:
        continue
      spec = getattr(finder, 'find_spec', lambda *_: None)(fullname, path, target)
      if spec is not None:
        if spec.loader is not None:
          spec.loader = _QuietLoader(spec.loader)
        return spec
    return None


def quiet_tensorflow_import() -> None:
  """Filters TensorFlow's import noise from stderr when (and wherever) it is first imported."""
  if _debug() or TENSORFLOW in sys.modules:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  if not any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowFinder())


class _WarningsOnlyFromOrbax(logging.logging.Filter):

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or '/orbax/' not in record.pathname


def quiet_library_logs() -> None:
  """Drops Orbax's INFO lines and JAX's list of platforms it did not find (warnings and errors
  still show), and TensorFlow's import noise (quiet_tensorflow_import)."""
  quiet_tensorflow_import()
  logging.get_absl_logger().addFilter(_WarningsOnlyFromOrbax())
  logging.logging.getLogger('jax._src.xla_bridge').setLevel(logging.logging.WARNING)
