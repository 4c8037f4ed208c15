"""RUN/eval/results.json (every evaluation's metrics and settings) and its table, results.md.

One entry per (protocol, dataset, split, checkpoint step); rerunning an evaluation replaces
its entry, so the table always shows the latest number for each.
"""

from __future__ import annotations

import json

from etils import epath

from vclr_jax import checkpointing

RESULTS_FILE = 'results.json'
TABLE_FILE = 'results.md'
_KEY_FIELDS = ('protocol', 'dataset', 'split', 'checkpoint_step')


def record(workdir: str, entry: dict) -> str:
  """Adds ``entry`` (protocol, dataset, split, checkpoint_step, metrics, settings) and returns
  the rendered table, which is also written to RUN/eval/results.md."""
  workdir = epath.Path(workdir)
  eval_dir = workdir / 'eval'
  eval_dir.mkdir(parents=True, exist_ok=True)
  path = eval_dir / RESULTS_FILE
  entries = json.loads(path.read_text()) if path.exists() else []
  key = tuple(entry[name] for name in _KEY_FIELDS)
  entries = [e for e in entries if tuple(e[name] for name in _KEY_FIELDS) != key] + [entry]
  tmp_path = eval_dir / (RESULTS_FILE + '.tmp')
  tmp_path.write_text(json.dumps(entries, indent=1, sort_keys=True))
  tmp_path.replace(path)
  table = render_table(entries)
  (eval_dir / TABLE_FILE).write_text(
      f'# Evaluation results of {checkpointing.absolute(workdir)}\n\n{table}\n')
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


def clip_settings(clip_length: int, clip_stride: int) -> dict[str, int]:
  """What a 3D encoder's results (and cached features) record of its clips; nothing for single
  frames, so that the records of 2D runs stay as they were."""
  if clip_length == 1:
    return {}
  return dict(clip_length=clip_length, clip_stride=clip_stride)
