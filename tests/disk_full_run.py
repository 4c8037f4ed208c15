"""Runs `python -m MODULE ARGS...` with a full disk simulated for checkpoints from one step on.

  python tests/disk_full_run.py FROM_STEP MODULE ARGS...

Every file that Python opens for writing (through etils.epath, as Orbax does for a checkpoint's
metadata) inside the folder of checkpoint step FROM_STEP or later fails with ENOSPC, as on a
full disk; earlier checkpoints are written normally. Rerunning the module without this wrapper
is "space freed".
"""

import errno
import os
import re
import runpy
import sys

from etils.epath import backend

# A step folder and Orbax's temporary name for it while it is written ("6.orbax-checkpoint-tmp-1").
STEP_FOLDER = re.compile(r'/checkpoints/(\d+)(?:\.|/)')


def main():
  from_step, module, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
  original_open = backend._OsPathBackend.open  # pylint: disable=protected-access

  def open_on_full_disk(self, path, mode, *rest, **kwargs):
    match = STEP_FOLDER.search(os.fspath(path))
    if any(m in mode for m in 'wax') and match and int(match.group(1)) >= from_step:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    return original_open(self, path, mode, *rest, **kwargs)

  backend._OsPathBackend.open = open_on_full_disk  # pylint: disable=protected-access
  sys.argv = [module] + args
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
