"""Training curves: the event files read back (resumed runs included) and one panel per term."""


from clu import metric_writers
import numpy as np
from PIL import Image

from vclr_jax import plots

PRETRAINING_TAGS = ['loss', 'loss_inter', 'loss_order', 'inter_acc', 'learning_rate',
                    'steps_per_sec', 'inter_acc_other_segments']


def _write(workdir, steps, offset):
  """Logs every PRETRAINING_TAGS term at ``steps`` (value = step + offset), as the loop does."""
  writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(workdir)))
  writer.write_hparams({'batch_size': 8})
  for step in steps:
    writer.write_scalars(step, {tag: step + offset for tag in PRETRAINING_TAGS})
  writer.close()


def test_read_scalars_keeps_the_last_value_of_a_repeated_step(tmp_path):
  _write(tmp_path, [5, 10, 15], offset=0.0)
  # A resumed run: a new event file that repeats step 15 (after a checkpoint at 10).
  _write(tmp_path, [15, 20], offset=0.5)
  curves = plots.read_scalars(str(tmp_path))
  assert sorted(curves) == sorted(PRETRAINING_TAGS)  # hparams are not curves
  steps, values = curves['loss_inter']
  np.testing.assert_array_equal(steps, [5, 10, 15, 20])
  np.testing.assert_allclose(values, [5, 10, 15.5, 20.5])


def test_curves_have_one_panel_per_term_and_overlay_runs(tmp_path):
  _write(tmp_path / 'a', [5, 10], offset=0.0)
  _write(tmp_path / 'b', [5, 10, 15], offset=1.0)
  path = plots.write_curves(str(tmp_path / 'a'))
  assert path == str(tmp_path / 'a' / 'curves.png')
  tags = plots.plot_runs({'seed 0': str(tmp_path / 'a'), 'seed 1': str(tmp_path / 'b')},
                         str(tmp_path / 'both.png'))
  assert tags == ['loss', 'loss_inter', 'loss_order', 'inter_acc', 'inter_acc_other_segments',
                  'learning_rate', 'steps_per_sec']
  for png in (path, tmp_path / 'both.png'):
    with Image.open(png) as image:
      # Seven panels: two rows of plots.PANEL_COLUMNS at 4 x 2.8 inches, 80 dpi.
      assert image.size == (plots.PANEL_COLUMNS * 4 * 80, 2 * 2.8 * 80)


def test_constantly_zero_terms_get_no_panel_but_a_line_under_the_figure(tmp_path):
  writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(tmp_path / 'a')))
  for step in (5, 10, 15):
    writer.write_scalars(step, {'loss': 10.0 - step / 5, 'inter_acc': step / 20,
                                'skipped_examples': 0.0, 'nonfinite_total': 0.0,
                                'skipped_nonfinite': float(step == 10)})
  writer.close()
  tags = plots.plot_runs({'a': str(tmp_path / 'a')}, str(tmp_path / 'a.png'))
  # skipped_nonfinite is zero but once: it keeps its panel.
  assert tags == ['loss', 'inter_acc', 'skipped_nonfinite']
  with Image.open(tmp_path / 'a.png') as image:
    pixels = np.asarray(image.convert('L'))
  # One row of panels and the strip under it, whose line of text darkens some pixels.
  note_rows = round(plots.NOTE_INCHES * 80)
  assert pixels.shape == (round(plots.PANEL_INCHES[1] * 80) + note_rows,
                          plots.PANEL_COLUMNS * plots.PANEL_INCHES[0] * 80)
  assert (pixels[-note_rows:] < 128).any()


def test_a_run_whose_every_term_is_zero_still_draws_them(tmp_path):
  writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(tmp_path)))
  writer.write_scalars(1, {'skipped_examples': 0.0, 'nonfinite_total': 0.0})
  writer.close()
  assert plots.plot_runs({'a': str(tmp_path)}, str(tmp_path / 'a.png')) == [
      'nonfinite_total', 'skipped_examples']
