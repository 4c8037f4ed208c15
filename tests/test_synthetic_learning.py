"""A short pretraining run on the synthetic videos lowers every one of VCLR's four losses.

The synthetic videos (the demo's scenes variant) keep an identity across their frames and show
time's direction in every frame (input_pipeline/synthetic.py), so each term has something to
learn: this test fails if one of them stays where it started, as the inter-frame, video-level
and order losses did on the first design.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import LONG_RUN_XLA_FLAGS, tiny_config
from input_pipeline import synthetic
from vclr_jax import plots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_RUN = os.path.join(REPO, 'tests', 'training_run.py')

TERMS = ('inter', 'intra', 'video', 'order')


@pytest.fixture(scope='module')
def records_dir(tmp_path_factory):
  return synthetic.prepare_synthetic(str(tmp_path_factory.mktemp('synthetic')), num_classes=4,
                                     videos_per_class=10, videos_per_shard=10)


# The short run on the records (tests/test_vit.py runs it with a ViT too). Crops and flips
# only: the demo's augmentation (no colour jitter), without its blur and with larger crops,
# which a run this short needs.
SHORT_RUN = {
    'data.source': 'records', 'data.split': 'train', 'data.frame_size': (96, 128),
    'batch_size': 16, 'queue_size': 32, 'num_epochs': 60, 'optim.warmup_epochs': 2,
    'log_every_steps': 10, 'checkpoint.every_steps': 1000,
    'data.augment.jitter_probability': 0.0, 'data.augment.grayscale_probability': 0.0,
    'data.augment.blur_probability': 0.0, 'data.augment.crop_scale': (0.4, 1.0)}


def chance_losses(config):
  """Each loss at chance: every logit equal, over the positive and the queue's keys (inter,
  video), the two frames (intra), the four order labels. The first steps score below that,
  against the queues' random initial entries, so chance is the baseline, not step 1."""
  return {'inter': np.log(config.queue_size + 1), 'intra': np.log(2),
          'video': np.log(config.queue_size + 1), 'order': np.log(4)}


def assert_run_lowers_every_loss_term(config, workdir):
  """Trains ``config`` on 8 CPU devices in a process of its own (conftest.LONG_RUN_XLA_FLAGS)
  and checks that each loss ends (mean of its last 3 logged values) clearly below chance."""
  config_path = f'{workdir}.config.pickle'
  with open(config_path, 'wb') as f:
    pickle.dump(config, f)
  done = subprocess.run([sys.executable, TRAINING_RUN, config_path, workdir], cwd=REPO,
                        env=dict(os.environ, XLA_FLAGS=LONG_RUN_XLA_FLAGS, PYTHONPATH=REPO),
                        capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  curves = plots.read_scalars(workdir)
  chance = chance_losses(config)
  last_window = {term: curves[f'loss_{term}'][1][-3:].mean() for term in TERMS}
  for term in TERMS:
    assert last_window[term] < chance[term] - 0.05, (term, chance, last_window)


def test_short_run_lowers_every_loss_term(records_dir, tmp_path):
  config = tiny_config(**SHORT_RUN, **{'data.records_dir': records_dir, 'optim.base_lr': 1.6})
  assert_run_lowers_every_loss_term(config, str(tmp_path / 'run'))
