"""RUN/eval/results.json (every evaluation's metrics and settings) and its table, results.md.

One entry per (protocol, dataset, split, checkpoint step); rerunning an evaluation replaces
its entry, so the table always shows the latest number for each.
"""

from __future__ import annotations

import json
import os

RESULTS_FILE = 'results.json'
TABLE_FILE = 'results.md'
_KEY_FIELDS = ('protocol', 'dataset', 'split', 'checkpoint_step')


def record(workdir: str, entry: dict) -> str:
  """Adds ``entry`` (protocol, dataset, split, checkpoint_step, metrics, settings) and returns
  the rendered table, which is also written to RUN/eval/results.md."""
  eval_dir = os.path.join(workdir, 'eval')
  os.makedirs(eval_dir, exist_ok=True)
  path = os.path.join(eval_dir, RESULTS_FILE)
  entries = []
  if os.path.exists(path):
    with open(path) as f:
      entries = json.load(f)
  key = tuple(entry[name] for name in _KEY_FIELDS)
  entries = [e for e in entries if tuple(e[name] for name in _KEY_FIELDS) != key] + [entry]
  tmp_path = path + '.tmp'
  with open(tmp_path, 'w') as f:
    json.dump(entries, f, indent=1, sort_keys=True)
  os.replace(tmp_path, path)
  table = render_table(entries)
  with open(os.path.join(eval_dir, TABLE_FILE), 'w') as f:
    f.write(f'# Evaluation results of {os.path.abspath(workdir)}\n\n{table}\n')
  return table


def render_table(entries: list[dict]) -> str:
  """A Markdown table: one row per entry, metrics as percentages."""
  lines = ['| protocol | dataset | split | checkpoint step | metrics |', '| --- | --- | --- | --- | --- |']
  for entry in entries:
    metrics = ', '.join(f'{name} {100 * value:.1f}' for name, value in entry['metrics'].items())
    step = 'random init' if entry['checkpoint_step'] is None else entry['checkpoint_step']
    lines.append(f'| {entry["protocol"]} | {entry["dataset"]} | {entry["split"]} | {step} | '
                 f'{metrics} |')
  return '\n'.join(lines)
