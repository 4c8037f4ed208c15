"""The README and docs/ against the code: commands, flags, configs, keys and links
(tests/docs_check.py), the README's length, and no process history in the docs."""

import glob
import os
import re

import docs_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
DOCS = [README] + sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
README_MAX_LINES = 250
EVIDENCE_MAX_LINES = 150


def test_every_command_flag_config_key_and_link_of_the_docs_exists():
  assert docs_check.check(DOCS, REPO) == []


def test_the_links_of_the_notebook_resolve():
  notebook = os.path.join(REPO, 'notebooks', 'vclr_colab.ipynb')
  assert docs_check.check_notebook_links(notebook, REPO) == []


SAMPLE = """# Sample

## Running it

```bash
python -m vclr_jax.main --config=configs/demo.py --workdir=runs/x --config.batch_size=8
python -m vclr_jax.main --config=configs/demo.py --workdri=runs/x
python -m vclr_jax.evaluate --config=configs/eval_missing.py --workdir=runs/x --eval=linear
ARGS="--config.data.recods_dir=/data"
python -m vclr_jax.main --config=configs/demo.py \\
    --workdir=runs/x $ARGS   # the key is misspelt in the variable
python scripts/no_such_script.py --out=x
python -m vclr_jax.no_such_module
python -m input_pipeline.prepare --source=list --root=data/synthetic --out=records
python benchmarks/train_step.py --config=configs/k400.py --config.model.compute_dtype=bfloat16
python -m pytest tests -q -n 2
```

```python
python -m this_is_python_code --not-a-shell-block
```

[a page](sample.md#running-it), [`code`](sample.md), [broken](missing.md), ![picture](nope.png),
[no such heading](#not-there), [web](https://example.com/x.md), `[in code](gone.md)`.
"""


def test_the_checker_fails_on_a_misspelt_flag_a_missing_config_and_a_broken_link(tmp_path):
  sample = tmp_path / 'sample.md'
  sample.write_text(SAMPLE)
  problems = docs_check.check([str(sample)], REPO)
  lines = SAMPLE.splitlines()
  continued = 'python -m vclr_jax.main --config=configs/demo.py \\'

  def at(text):  # 'path:line:' of the sample's only line holding text
    (number,) = [n for n, line in enumerate(lines, 1) if text in line]
    return f'{os.path.relpath(sample, REPO)}:{number}:'

  assert sorted(problems) == sorted([
      f'{at("--workdri")} `python -m vclr_jax.main` defines no flag --workdri',
      f'{at("eval_missing")} --config=configs/eval_missing.py: no such config file',
      # a continued command is reported at its first line, its variable substituted
      f'{at(continued)} --config.data.recods_dir: not a key of the config',
      f'{at("no_such_script")} `python scripts/no_such_script.py`: no such file',
      f'{at("no_such_module")} `python -m vclr_jax.no_such_module`: no such module',
      f'{at("missing.md")} broken link missing.md',
      f'{at("missing.md")} broken link nope.png',
      f'{at("#not-there")} #not-there: no heading with that anchor',
  ])


def test_flags_come_from_the_entry_points_source(tmp_path):
  entry = tmp_path / 'tool.py'
  entry.write_text('from absl import flags\nimport argparse\n'
                   "flags.DEFINE_bool('fast', False, '')\n"
                   "argparse.ArgumentParser().add_argument('--out', '-o')\n")
  flags = docs_check.EntryPoint(str(entry)).flags
  assert {'fast', 'nofast', 'out', 'help'} <= flags and 'o' not in flags


def test_github_anchors():
  assert docs_check.github_anchor(
      '7. Damaged records: skipped, counted, named; `python -m input_pipeline.verify`'
  ) == '7-damaged-records-skipped-counted-named-python--m-input_pipelineverify'
  assert docs_check.github_anchor('What `bn_batching=\'reference\'` costs') == (
      'what-bn_batchingreference-costs')


def test_readme_and_evidence_are_short():
  for path, most in ((README, README_MAX_LINES),
                     (os.path.join(REPO, 'docs', 'evidence.md'), EVIDENCE_MAX_LINES)):
    with open(path, encoding='utf-8') as f:
      assert len(f.read().splitlines()) <= most, path


def test_no_process_history_in_the_docs():
  for path in DOCS:
    with open(path, encoding='utf-8') as f:
      for number, line in enumerate(f, 1):
        assert not re.search(r'session|tried and reverted|not yet found', line, re.I), (
            f'{os.path.relpath(path, REPO)}:{number}: {line.strip()}')


def test_the_config_reference_lists_every_pretraining_key():
  config = docs_check.load_config(os.path.join(REPO, 'configs', 'k400.py'), None)
  with open(os.path.join(REPO, 'docs', 'training.md'), encoding='utf-8') as f:
    reference = f.read().split('## Config reference', 1)[1]

  def leaves(node, prefix=''):
    for key, value in node.items():
      if hasattr(value, 'items'):
        yield from leaves(value, f'{prefix}{key}.')
      else:
        yield prefix + key

  missing = [key for key in leaves(config) if f'`{key}`' not in reference]
  assert not missing, f'docs/training.md, "Config reference", lacks {missing}'


def test_the_step_figure_is_drawn_by_its_script(tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('draw_step',
                                                os.path.join(REPO, 'scripts', 'draw_step.py'))
  draw_step = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(draw_step)
  draw_step.draw(str(tmp_path / 'step.png'))
  with Image.open(tmp_path / 'step.png') as drawn, \
      Image.open(os.path.join(REPO, 'docs', 'train_step.png')) as committed:
    assert drawn.size == committed.size  # the committed figure is the script's


def test_the_plan_tables_are_the_committed_reports():
  """The README's and docs/pods.md's plan table is scripts/plan_table.py's output for the
  reports in docs/plans, so no figure of it is typed by hand."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  reports = sorted(glob.glob(os.path.join(REPO, 'docs', 'plans', '*.json')))
  result = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'plan_table.py')]
                          + reports, capture_output=True, text=True, timeout=60, check=True)
  table = result.stdout.strip()
  assert len(table.splitlines()) == 9  # header, separator, seven topologies
  for path in (README, os.path.join(REPO, 'docs', 'pods.md')):
    with open(path, encoding='utf-8') as f:
      assert table in f.read(), path
