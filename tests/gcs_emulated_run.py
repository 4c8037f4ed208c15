"""Runs `python -m MODULE ARGS...` against a GCS emulator, with TensorBoard's events kept local.

  python tests/gcs_emulated_run.py EVENTS_DIR MODULE ARGS...

The caller's environment points Orbax's TensorStore (TENSORSTORE_GCS_HTTP_URL) and
etils.epath's fsspec backend (EPATH_USE_TF=0; gcsfs reads STORAGE_EMULATOR_HOST) at an
emulator on loopback, so every gs:// path of the run goes there. TensorFlow's own GCS client,
which TensorBoard's summary writer uses, has no endpoint setting: it would try Google's servers.
So the event files go to the local EVENTS_DIR, and the curves are drawn from there (the
picture itself is still written to the bucket).
"""

import runpy
import sys


def main():
  events_dir, module, args = sys.argv[1], sys.argv[2], sys.argv[3:]
  from clu import metric_writers
  from vclr_jax import plots

  summary_writer, read_scalars = metric_writers.SummaryWriter, plots.read_scalars
  metric_writers.SummaryWriter = lambda logdir, *rest, **kwargs: summary_writer(
      events_dir, *rest, **kwargs)
  plots.read_scalars = lambda workdir: read_scalars(events_dir)
  sys.argv = [module] + args
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
