"""Training curves from a run's TensorBoard event files: curves.png, one panel per logged term.

  python -m vclr_jax.plots --workdir=runs/demo                 # writes runs/demo/curves.png
  python -m vclr_jax.plots --workdirs=runs/a,runs/b --labels='seed 0,seed 1' --out=curves.png

The training loop (vclr_jax/training_loop.py) writes every logged window's means with clu's
SummaryWriter, which stores each scalar as a tensor event of TensorBoard's scalars plugin.
Pretraining logs its four loss terms and their total, their four accuracies, the learning
rate, the gradient norm, throughput and the non-finite counters; fine-tuning logs loss,
accuracy and throughput. Every tag gets its own panel: losses first, then accuracies, the
learning rate, and the rest by name. Several runs are overlaid in the same panels. A tag that
is zero at every step of every run (no skipped examples, no non-finite steps) gets no panel;
one line under the figure names those tags.

matplotlib and tensorboard are imported inside the functions, so importing this module costs
nothing in the trainer.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
from absl import app
from absl import flags
from etils import epath

CURVES_FILENAME = 'curves.png'
PANEL_COLUMNS = 4
PANEL_INCHES = (4, 2.8)  # width, height
NOTE_INCHES = 0.4  # the strip under the panels that names the constantly zero tags
SCALARS_PLUGIN = 'scalars'


def read_scalars(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{tag: (steps, values)} of every scalar in ``workdir``'s own event files, sorted by step.

  Event files in subdirectories (a fine-tuning run in RUN/finetune/<name>) are not read. A
  resumed run writes a new event file and repeats the steps after its last checkpoint; the
  value written last wins.
  """
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  if not epath.Path(workdir).is_dir():
    raise FileNotFoundError(f'{workdir} is not a directory: give a run directory (--workdir).')
  accumulator = event_accumulator.EventAccumulator(
      workdir, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0})
  accumulator.Reload()
  tags = accumulator.Tags()
  events = {tag: [(e.wall_time, e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in tags[event_accumulator.SCALARS]}
  for tag in tags[event_accumulator.TENSORS]:
    if accumulator.SummaryMetadata(tag).plugin_data.plugin_name != SCALARS_PLUGIN:
      continue  # hparams and other plugins' tensors
    events[tag] = [(e.wall_time, e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                   for e in accumulator.Tensors(tag)]
  curves = {}
  for tag, tag_events in events.items():
    by_step = {step: value for _, step, value in sorted(tag_events)}
    steps = np.array(sorted(by_step), np.int64)
    curves[tag] = (steps, np.array([by_step[s] for s in steps], np.float64))
  return curves


def panel_order(tag: str) -> tuple[int, str]:
  """Sort key: total loss, loss terms, accuracies, learning rate, then the rest by name."""
  if tag == 'loss':
    rank = 0
  elif tag.startswith('loss'):
    rank = 1
  elif tag.endswith('acc') or tag.startswith('acc') or '_acc_' in tag:
    rank = 2
  elif tag == 'learning_rate':
    rank = 3
  else:
    rank = 4
  return rank, tag


def constantly_zero(runs: Mapping[str, dict], tag: str) -> bool:
  """Whether ``tag`` is 0 at every logged step of every run that logs it."""
  return all(not np.any(curves[tag][1]) for curves in runs.values() if tag in curves)


def plot_runs(workdirs: Mapping[str, str], out: str) -> list[str]:
  """Draws every run's curves into ``out`` (PNG); returns the panel titles (the tags), in order.

  ``workdirs`` maps a legend label to a run directory; a run without a tag leaves that panel
  to the others. Tags that are constantly zero get no panel and are named under the figure
  (unless every tag is).
  """
  import matplotlib
  matplotlib.use('Agg')  # files only; no display on training machines
  import matplotlib.pyplot as plt

  runs = {label: read_scalars(directory) for label, directory in workdirs.items()}
  tags = sorted({tag for curves in runs.values() for tag in curves}, key=panel_order)
  if not tags:
    raise ValueError(f'No scalars in the event files of {", ".join(workdirs.values())}: has the '
                     'run logged a step yet (config.log_every_steps)?')
  zero = [tag for tag in tags if constantly_zero(runs, tag)]
  if len(zero) < len(tags):
    tags = [tag for tag in tags if tag not in zero]
  else:
    zero = []
  rows = -(-len(tags) // PANEL_COLUMNS)
  note = NOTE_INCHES if zero else 0.0
  height = PANEL_INCHES[1] * rows + note
  figure, axes = plt.subplots(rows, PANEL_COLUMNS,
                              figsize=(PANEL_INCHES[0] * PANEL_COLUMNS, height), squeeze=False)
  for axis, tag in zip(axes.flat, tags):
    for label, curves in runs.items():
      if tag in curves:
        steps, values = curves[tag]
        axis.plot(steps, values, marker='.' if len(steps) < 20 else None, label=label)
    axis.set_title(tag, fontsize=10)
    axis.set_xlabel('step', fontsize=8)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3)
    if len(runs) > 1:
      axis.legend(fontsize=7)
  for axis in axes.flat[len(tags):]:
    axis.remove()
  figure.tight_layout(rect=(0, note / height, 1, 1))
  if zero:
    figure.text(0.01, note / height / 2, f'Zero at every step, not drawn: {", ".join(zero)}.',
                va='center', fontsize=10)
  epath.Path(out).parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(out).open('wb') as f:
    figure.savefig(f, format='png', dpi=80)
  plt.close(figure)
  return tags


def write_curves(workdir: str, out: str | None = None) -> str:
  """``workdir``'s curves in ``out`` (default RUN/curves.png); returns the path."""
  out = out or str(epath.Path(workdir) / CURVES_FILENAME)
  plot_runs({epath.Path(workdir).name: workdir}, out)
  return out


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags; defined only when run as a program, since the trainer that
  imports this module has its own --workdir."""
  flags.DEFINE_string('workdir', None, 'A run directory (pretraining RUN or RUN/finetune/<name>).')
  flags.DEFINE_list('workdirs', None, 'Several run directories, overlaid in the same panels.')
  flags.DEFINE_list('labels', None, 'Legend labels of --workdirs (default: the directory names).')
  flags.DEFINE_string('out', None, 'The PNG to write (default: WORKDIR/curves.png; required '
                      'with --workdirs).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if bool(FLAGS.workdir) == bool(FLAGS.workdirs):
    raise app.UsageError('Give exactly one of --workdir=RUN or --workdirs=RUN_A,RUN_B.')
  if FLAGS.workdir:
    print(f'Training curves: {write_curves(FLAGS.workdir, FLAGS.out)}')
    return
  if not FLAGS.out:
    raise app.UsageError('--workdirs needs --out=PATH.png.')
  labels = FLAGS.labels or [os.path.basename(os.path.normpath(d)) for d in FLAGS.workdirs]
  if len(labels) != len(FLAGS.workdirs) or len(set(labels)) != len(labels):
    raise app.UsageError(f'--labels needs one distinct label per --workdirs entry; got {labels} '
                         f'for {FLAGS.workdirs}.')
  plot_runs(dict(zip(labels, FLAGS.workdirs)), FLAGS.out)
  print(f'Training curves: {FLAGS.out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
