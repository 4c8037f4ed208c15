"""Evidence of learning on the synthetic dataset, with the demo's budget: writes the tables
of docs/evidence.md.

  python scripts/evidence_table.py --seeds=0,1,2 --out=runs/evidence

For every seed it pretrains configs/demo.py four times (loss-term ablation: frame-level only
= inter + intra; + video; + order; both = full VCLR), evaluates each run with the linear SVM
and retrieval of configs/eval_synthetic.py, evaluates the untrained network of the same
architecture (random init), and trains the same network with labels (TSN from random init,
configs/finetune_synthetic.py) whose backbone is then evaluated the same way (the supervised
reference). Every number comes from a run's RUN/eval/results.json; the table reports the mean
over seeds and each seed's value. The full runs' training accuracies at the end (the mean of
the last logged window) come from their event files, and their curves of every term, seeds
overlaid, go to docs/evidence_curves.png. Runs resume, so an interrupted script can be rerun.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run as a script from anywhere
from input_pipeline import synthetic  # pylint: disable=wrong-import-position  # noqa: E402
from vclr_jax import plots  # pylint: disable=wrong-import-position  # noqa: E402

# name -> config.loss.weights overrides
ABLATIONS = {
    'frame-level only (inter + intra)': {'video': 0.0, 'order': 0.0},
    '+ video-level': {'order': 0.0},
    '+ order': {'video': 0.0},
    '+ video-level + order (full VCLR)': {},
}
FULL_VCLR = 'VCLR, + video-level + order (full VCLR)'
# Training accuracies reported for the full runs, with their chance levels (the queues hold
# configs/demo.py's 64 keys, so inter and video pick 1 of 65; intra 1 of 2; order 1 of 4).
# Inter is also split into its rows: the anchor's own frame re-augmented (k1) and the other
# segments' frames (k2, k3).
TRAINING_ACCURACIES = {'inter_acc': 1 / 65, 'inter_acc_same_frame': 1 / 65,
                       'inter_acc_other_segments': 1 / 65, 'intra_acc': 1 / 2,
                       'video_acc': 1 / 65, 'order_acc': 1 / 4}
CURVES = 'docs/evidence_curves.png'
SUPERVISED_RUN = 'supervised'
TSN_ROW = 'supervised TSN, its own test top-1'


def run(args, log_path):
  """Runs a python module of this repository, its output in log_path; stops on failure."""
  command = [sys.executable, '-m', *args]
  start = time.time()
  with open(log_path, 'a') as log:
    result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  print(f'  {" ".join(args[:1] + args[2:4])}... {time.time() - start:.0f}s', flush=True)
  if result.returncode:
    raise SystemExit(f'Failed ({result.returncode}): {" ".join(command)}; see {log_path}')


def evaluate(workdir, records_dir, log_path, *extra):
  for protocol in ('linear', 'retrieval'):
    run(['vclr_jax.evaluate', '--config=configs/eval_synthetic.py', f'--workdir={workdir}',
         f'--eval={protocol}', f'--config.data.records_dir={records_dir}', *extra], log_path)


def read_metrics(workdir, checkpoint_contains):
  """{'linear': top1, 'retrieval': R@1} of the results whose checkpoint text matches."""
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    entries = json.load(f)
  found = {}
  for entry in entries:
    if checkpoint_contains in entry['checkpoint']:
      key = 'top1' if entry['protocol'] == 'linear' else 'R@1'
      if entry['protocol'] in ('linear', 'retrieval'):
        found[entry['protocol']] = entry['metrics'][key]
  return found


def seed_results(seed, out, records_dir, *, ablation=True, supervised=True):
  """({row: {'linear': top1, 'retrieval': R@1}}, the full VCLR run's directory) of one seed."""
  rows = {}
  for index, (name, weights) in enumerate(ABLATIONS.items()):
    if weights and not ablation:
      continue
    workdir = os.path.join(out, f'seed{seed}_ablation{index}')
    log_path = workdir + '.log'
    os.makedirs(out, exist_ok=True)
    print(f'seed {seed}: pretraining "{name}" in {workdir}', flush=True)
    run(['vclr_jax.main', '--config=configs/demo.py', f'--workdir={workdir}',
         f'--config.seed={seed}', f'--config.data.records_dir={records_dir}',
         *[f'--config.loss.weights.{term}={value}' for term, value in weights.items()]],
        log_path)
    evaluate(workdir, records_dir, log_path)
    rows[f'VCLR, {name}'] = read_metrics(workdir, os.path.join('checkpoints', ''))
  full_run = workdir  # ABLATIONS ends with the full method
  log_path = full_run + '.log'
  print(f'seed {seed}: random init' + (' and supervised reference' if supervised else ''),
        flush=True)
  evaluate(full_run, records_dir, log_path, '--config.random_init=True', f'--config.seed={seed}')
  rows['random init (no training)'] = read_metrics(full_run, f'random init (seed {seed})')
  if not supervised:
    return rows, full_run
  run(['vclr_jax.evaluate', '--config=configs/finetune_synthetic.py', f'--workdir={full_run}',
       '--eval=finetune', '--config.init=random', f'--config.seed={seed}',
       f'--config.name={SUPERVISED_RUN}', f'--config.data.records_dir={records_dir}'], log_path)
  evaluate(full_run, records_dir, log_path, f'--config.finetuned_backbone={SUPERVISED_RUN}')
  rows['supervised with labels (TSN from random init)'] = read_metrics(
      full_run, 'fine-tuned backbone')
  rows[TSN_ROW] = {'top1': read_tsn_top1(full_run)}
  return rows, full_run


def final_training_accuracies(workdir):
  """{tag: value} of the last logged window of the run's TRAINING_ACCURACIES."""
  curves = plots.read_scalars(workdir)
  return {tag: float(curves[tag][1][-1]) for tag in TRAINING_ACCURACIES}


def read_tsn_top1(workdir):
  """Test top-1 of the supervised TSN itself (its own test protocol), from results.json."""
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    entries = json.load(f)
  return [e['metrics']['top1'] for e in entries
          if e['protocol'] == f'finetune ({SUPERVISED_RUN})'][-1]


def cell(values):
  """'**mean** (each value)' of percentages."""
  return f'**{sum(values) / len(values):.1f}** ({", ".join(f"{v:.1f}" for v in values)})'


def format_table(per_seed):
  order = ['random init (no training)', *[f'VCLR, {name}' for name in ABLATIONS],
           'supervised with labels (TSN from random init)']
  lines = ['| encoder | linear top-1 (%) | retrieval R@1 (%) |', '| --- | --- | --- |']
  for row in order:
    seeds = [seed for seed, rows in per_seed.items() if row in rows]
    if not seeds:
      continue
    label = row if len(seeds) == len(per_seed) else (
        f'{row} (seed{"s" if len(seeds) > 1 else ""} {", ".join(map(str, seeds))})')
    cells = [cell([100 * per_seed[seed][row][metric] for seed in seeds])
             for metric in ('linear', 'retrieval')]
    lines.append(f'| {label} | {cells[0]} | {cells[1]} |')
  return '\n'.join(lines)


def format_accuracies(accuracies):
  """The full runs' training accuracies at the end, one row per term, against chance."""
  lines = ['| term | chance (%) | training top-1 at the end (%) |', '| --- | --- | --- |']
  for tag, chance in TRAINING_ACCURACIES.items():
    values = [100 * by_tag[tag] for by_tag in accuracies.values()]
    lines.append(f'| {tag.replace("_acc", "")} | {100 * chance:.1f} | {cell(values)} |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', default='0,1,2', help='comma-separated pretraining seeds')
  parser.add_argument('--ablation_seeds', default=None,
                      help='the seeds that also run the ablation rows (default: all --seeds)')
  parser.add_argument('--supervised_seeds', default=None,
                      help='the seeds that also train the supervised reference (default: all '
                      '--seeds)')
  parser.add_argument('--out', default='runs/evidence', help='folder for the runs and logs')
  parser.add_argument('--data', default='data', help='where the synthetic dataset lives')
  parser.add_argument('--doc', default='docs/evidence.md', help='the tables are written here')
  parser.add_argument('--curves', default=CURVES,
                      help="the full runs' training curves are drawn here (beside --doc)")
  parser.add_argument('--full_only', action='store_true',
                      help='only full VCLR and random init (no ablation, no supervised rows)')
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  ablation_seeds, supervised_seeds = (
      seeds if subset is None else [int(s) for s in subset.split(',') if s]
      for subset in (args.ablation_seeds, args.supervised_seeds))
  out = os.path.abspath(args.out)
  records_dir = os.path.abspath(os.path.join(args.data, 'synthetic_records'))
  if not os.path.isdir(records_dir):
    raise SystemExit(f'{records_dir} not found: run bash scripts/demo.sh once (it prepares the '
                     'synthetic dataset), or pass --data.')
  dataset = describe_dataset(os.path.join(args.data, 'synthetic'))
  start = time.time()
  per_seed, full_runs = {}, {}
  for seed in seeds:
    per_seed[seed], full_runs[seed] = seed_results(
        seed, out, records_dir, ablation=not args.full_only and seed in ablation_seeds,
        supervised=not args.full_only and seed in supervised_seeds)
  table = format_table(per_seed)
  if not args.full_only and supervised_seeds:
    table += (f'\n\nThe supervised TSN itself (3 segments, test on 8 frames, predictions '
              f'averaged) reaches test top-1 '
              f'{cell([100 * per_seed[seed][TSN_ROW]["top1"] for seed in supervised_seeds])}'
              f' (seed{"s" if len(supervised_seeds) > 1 else ""} '
              f'{", ".join(map(str, supervised_seeds))}).')
  accuracies = format_accuracies(
      {seed: final_training_accuracies(workdir) for seed, workdir in full_runs.items()})
  plots.plot_runs({f'seed {seed}': workdir for seed, workdir in full_runs.items()},
                  os.path.join(REPO, args.curves))
  flags = ' --full_only' if args.full_only else ''.join(
      f' --{name}={value}' for name, value in (('ablation_seeds', args.ablation_seeds),
                                               ('supervised_seeds', args.supervised_seeds))
      if value is not None)
  minutes = (time.time() - start) / 60
  write_generated_part(os.path.join(REPO, args.doc), EVIDENCE_TEMPLATE.format(
      table=table, accuracies=accuracies, seeds=args.seeds, minutes=minutes, dataset=dataset,
      rows_note=(ABLATION_NOTE if not args.full_only and set(seeds) & set(ablation_seeds)
                 else ''),
      curves_name=os.path.relpath(os.path.join(REPO, args.curves),
                                  os.path.dirname(os.path.join(REPO, args.doc))),
      command=f'python scripts/evidence_table.py --seeds={args.seeds}{flags}'))
  print(table, accuracies, sep='\n\n')


def describe_dataset(videos_dir):
  """'the VARIANT videos: C classes, N training and M test videos' of the generated dataset."""
  settings = synthetic.generated_settings(videos_dir)
  if settings is None:
    raise SystemExit(f'{videos_dir} holds no finished synthetic dataset (no '
                     f'{synthetic.GENERATOR_FILE}): run bash scripts/demo.sh once, or pass --data.')
  counts = {}
  for split in ('train', 'test'):
    with open(os.path.join(videos_dir, f'{split}.txt')) as f:
      counts[split] = sum(1 for line in f if line.strip())
  return (f'the {settings["variant"]} videos: {settings["num_classes"]} classes, '
          f'{counts["train"]} training and {counts["test"]} test videos')


def write_generated_part(doc_path, generated):
  """Puts ``generated`` between the doc's markers, keeping the hand-written text around them
  (a doc without markers is written afresh: title and generated part)."""
  text = ''
  if os.path.exists(doc_path):
    with open(doc_path) as f:
      text = f.read()
  if GENERATED_BEGIN in text and GENERATED_END in text:
    head, rest = text.split(GENERATED_BEGIN, 1)
    tail = rest.split(GENERATED_END, 1)[1]
  else:
    head, tail = '# Evidence of learning on the synthetic dataset\n\n', '\n'
  with open(doc_path, 'w') as f:
    f.write(f'{head}{GENERATED_BEGIN}\n{generated}{GENERATED_END}{tail}')


ABLATION_NOTE = """The VCLR rows are the loss-term ablation: frame-level only trains inter + intra
(config.loss.weights.video = order = 0); then the video-level loss or the order loss is added;
the last row has both (the full method).
"""
GENERATED_BEGIN = '<!-- written by scripts/evidence_table.py: begin -->'
GENERATED_END = '<!-- written by scripts/evidence_table.py: end -->'
EVIDENCE_TEMPLATE = """Regenerate (about {minutes:.0f} minutes on 2 CPU cores): `{command}`

Every encoder is the demo's network (configs/demo.py: quarter-width ResNet-18, 96 px) on the
embedded synthetic dataset ({dataset};
[data.md](data.md#5-synthetic-dataset-python--m-input_pipelinesynthetic)), evaluated with
configs/eval_synthetic.py: features averaged over 8 frames, linear SVM (LinearSVC, C=1, no
bias) trained on the training split and tested on the test split, retrieval R@1 of test
queries against the training gallery. Pretraining uses the demo's budget and recipe (45
epochs, 405 steps, crops, flips and blur without colour jitter or grayscale). Cells: **mean
over seeds {seeds}** (each seed's value); a row run for fewer seeds names them. Chance is 8.3%.

{table}

{rows_note}The supervised row trains the same network with the class labels (TSN,
configs/finetune_synthetic.py with init=random) and evaluates its backbone the same way.

## Does every term learn?

Training accuracies of the full VCLR runs at the end of pretraining (the mean over the last
logged window of 15 steps; inter and video pick the positive key among it and the queue's 64
negatives, intra the same frame against another frame of the video, order one of 4 labels;
inter_same_frame and inter_other_segments are inter's rows whose positive is the anchor frame
re-augmented, and those whose positive is another segment's frame):

{accuracies}

Every term's loss and accuracy, and the learning rate, over the run (seeds overlaid):

![training curves of the full VCLR runs]({curves_name})
"""


if __name__ == '__main__':
  main()
