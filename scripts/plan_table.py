"""The README's plan table from `python -m vclr_jax.plan ... --json` reports, one row each.

  python -m vclr_jax.plan --config=configs/k400.py --topology=v5e-8 --per_chip_batch=32 \
      --json > docs/plans/1a-v5e-8.json
  python -m vclr_jax.plan --config=configs/k400.py --topology=v5e-8 --per_chip_batch=120 \
      --find_max_batch --json > docs/plans/1b-v5e-8-search.json
  python scripts/plan_table.py docs/plans/*.json

Rows come in the order of the files; a report's label is its topology, with the slice count
and the chip count where the name does not say them. A later report of the same topology
fills the earlier row's largest batch with its search (a search started near the limit,
`--per_chip_batch=120 --find_max_batch`, beside the row at 32 videos per chip).
"""

import json
import sys

HEADER = ('| topology | per-chip batch | HBM peak / capacity | largest per-chip batch | '
          'GFLOP per video (model / step) | collective MB per chip and step | '
          'est. videos/s per chip | est. chip-hours, 400 epochs | compile |')


def label(report: dict) -> str:
  name = report['topology']
  if report['num_slices'] > 1:
    name = f"{report['num_slices']} x {name}"
  if report['platform'] == 'cuda':
    name = f"{report['chips']} x {report['chip'].replace('NVIDIA ', '')}"
  elif str(report['chips']) not in name:
    name += f" ({report['chips']} chips)"
  return name


def row(report: dict) -> str:
  memory = report['memory_bytes']
  capacity = report.get('hbm_capacity_bytes')
  hbm = f"{memory['peak'] / 1e9:.2f} / {capacity / 1e9:.0f} GB" if capacity else (
      f"{memory['peak'] / 1e9:.2f} GB")
  search = report.get('max_batch')
  largest = 'not searched'
  if search:
    start = search.get('from', report['per_chip_batch'])
    largest = f"{search['per_chip_batch']} ({search['compiles']} compiles" + (
        f" from {start})" if start != report['per_chip_batch'] else ')')
  collectives = sum(entry['bytes'] for entry in report['collectives'].values()) / 1e6
  estimate = report.get('estimate')
  speed = f"{estimate['videos_per_s_per_chip']:,.0f}" if estimate else '-'
  hours = f"{estimate['chip_hours']:,.0f}" if estimate else '-'
  if estimate and estimate['epochs'] != 400:
    hours = f"{estimate['chip_hours'] * 400 / estimate['epochs']:,.0f}"
  model = report['gflop_per_video_model']
  flops = (f"{model:.1f} / " if model is not None else '') + (
      f"{report['gflop_per_video_step']:.1f}")
  return (f"| {label(report)} | {report['per_chip_batch']} | {hbm} | {largest} | {flops} | "
          f"{collectives:.0f} | {speed} | {hours} | {report['compile_seconds']:.0f} s |")


def merged(reports: list[dict]) -> list[dict]:
  """One report per topology: a repeated topology's search goes to its first report."""
  rows = {}
  for report in reports:
    first = rows.setdefault(label(report), report)
    if first is not report and report.get('max_batch'):
      rows[label(report)] = dict(first, max_batch=dict(report['max_batch'],
                                                       **{'from': report['per_chip_batch']}))
  return list(rows.values())


def table(reports: list[dict]) -> str:
  separator = '|' + ' --- |' * HEADER.count(' | ') + ' --- |'
  return '\n'.join([HEADER, separator] + [row(report) for report in merged(reports)])


def main(paths: list[str]) -> None:
  if not paths:
    raise SystemExit(__doc__)
  reports = []
  for path in paths:
    try:
      with open(path) as f:
        reports.append(json.load(f))
    except (OSError, json.JSONDecodeError) as error:
      raise SystemExit(f'{path}: not a report of `python -m vclr_jax.plan --json` ({error}).')
  print(table(reports))


if __name__ == '__main__':
  main(sys.argv[1:])
