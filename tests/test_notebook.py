"""notebooks/vclr_colab.ipynb runs top to bottom at its smallest budget (nbclient), and a rerun
of its pretraining cell resumes instead of starting over."""

import os
import re

import nbclient
import nbformat

from conftest import FAST_COMPILE_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'vclr_colab.ipynb')
RESUMED_LINE = re.compile(r'Resumed from \S+ at step (\d+)')
FEATURES_LINE = re.compile(r'features up to ([\d.e+-]+), max \|torchvision - JAX\| = ([\d.e+-]+)')


def read_notebook():
  with open(NOTEBOOK) as f:
    return nbformat.read(f, as_version=4)


def cell_with(notebook, marker):
  return next(cell for cell in notebook.cells if marker in cell.source)


def cell_text(cell):
  return ''.join(output.get('text', '') for output in cell.outputs
                 if output.output_type == 'stream')


def test_committed_notebook_has_no_outputs_and_one_parameters_cell():
  notebook = read_notebook()
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert all(not cell.outputs and cell.execution_count is None for cell in code)
  assert sum('parameters' in cell.metadata.get('tags', []) for cell in code) == 1


def test_notebook_runs_end_to_end_at_the_smoke_budget(tmp_path, monkeypatch):
  # One CPU device in the kernel, as on a CPU runtime (the suite's 8 forced devices are for
  # the data-parallel tests).
  monkeypatch.setenv('XLA_FLAGS', FAST_COMPILE_FLAGS)
  notebook = read_notebook()
  parameters = next(cell for cell in notebook.cells
                    if 'parameters' in cell.metadata.get('tags', []))
  parameters.source = '\n'.join([
      "BUDGET = 'smoke'", f'REPO = {REPO!r}', f"WORKDIR = {str(tmp_path / 'run')!r}",
      f"DATA = {str(tmp_path / 'data')!r}", 'INSTALL = False'])
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': str(tmp_path)}})
  with client.setup_kernel():
    for index, cell in enumerate(notebook.cells):
      client.execute_cell(cell, index)  # raises CellExecutionError naming the failing cell
    notebook.cells.append(nbformat.v4.new_code_cell(
        cell_with(notebook, 'train.train_and_evaluate').source))
    rerun = client.execute_cell(notebook.cells[-1], len(notebook.cells) - 1)

  def images(cell):
    return [output for output in cell.outputs if 'image/png' in output.get('data', {})]

  cells = {name: cell_with(notebook, marker)
           for name, marker in (('curves', 'plots.write_curves'),
                                ('evaluate', 'protocols.run_linear'),
                                ('finetune', 'finetune.run_finetune'),
                                ('gradcam', 'visualize.visualize'),
                                ('export', 'torch.load(EXPORT'))}
  for name in ('curves', 'evaluate', 'gradcam'):
    assert len(images(cells[name])) == 1, name
  assert 'fine-tuned test top-1' in cell_text(cells['finetune'])
  # torchvision and JAX agree on the same frames (float32 rounding only).
  largest, difference = map(float, FEATURES_LINE.search(cell_text(cells['export'])).groups())
  assert largest > 0 and difference <= 1e-4 * max(1.0, largest), (largest, difference)
  # The rerun found the finished run and resumed at its last checkpoint, the final step.
  resumed = RESUMED_LINE.search(cell_text(rerun))
  assert resumed, cell_text(rerun)[-2000:]
  final_step = max(int(name) for name in os.listdir(tmp_path / 'run' / 'checkpoints')
                   if name.isdigit())
  assert int(resumed[1]) == final_step > 0
  assert (tmp_path / 'run' / 'curves.png').exists()
  assert (tmp_path / 'run' / 'gradcam' / 'gradcam_grid.png').exists()
