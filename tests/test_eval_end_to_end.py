"""On the prepared synthetic records: linear + retrieval write results and the picture; TSN
fine-tuning beats chance and a resumed run ends where an uninterrupted one does."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import eval_synthetic
from configs import finetune_synthetic
from conftest import tiny_config
from eval_fixtures import make_encoder_run
from input_pipeline import eval_reader
from input_pipeline import synthetic
from vclr_jax import augment
from vclr_jax import checkpointing
from vclr_jax import visualize
from vclr_jax.cli_errors import UserError
from vclr_jax.evaluation import finetune
from vclr_jax.evaluation import protocols

NUM_CLASSES = 4
quiet = lambda line: None


@pytest.fixture(scope='module')
def records_dir(tmp_path_factory):
  # The actions videos: their phases cover the frame, so a short fine-tuning from random init
  # learns them (the scenes videos' actions play on a fifth to a third of the frame, and
  # these few steps leave them at chance).
  return synthetic.prepare_synthetic(str(tmp_path_factory.mktemp('synthetic')),
                                     num_classes=NUM_CLASSES, videos_per_class=12,
                                     videos_per_shard=12, variant='actions')


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  # What the evaluations read of a pretraining run (config.json, the online network at step 3);
  # no train state to build and save.
  return make_encoder_run(tmp_path_factory.mktemp('run'), tiny_config(), step=3)


def _eval_config(records_dir):
  config = eval_synthetic.get_config()
  config.data.records_dir = records_dir
  config.data.num_frames = 4
  config.data.crop_size = 64
  config.data.resize_short_side = 72
  config.data.batch_size = 8
  config.features.thumbnail_size = 16
  return config


def test_linear_and_retrieval_write_results_table_and_picture(records_dir, run_dir):
  config = _eval_config(records_dir)
  linear_metrics = protocols.run_linear(config, run_dir, log=quiet)
  retrieval_metrics = protocols.run_retrieval(config, run_dir, log=quiet)
  with open(os.path.join(run_dir, 'eval', 'results.json')) as f:
    entries = json.load(f)
  assert {(e['protocol'], e['split'], e['checkpoint_step']) for e in entries} == {
      ('linear', 'test', 3), ('retrieval', 'test', 3)}
  by_protocol = {e['protocol']: e for e in entries}
  assert by_protocol['linear']['metrics'] == linear_metrics
  assert set(retrieval_metrics) == {'R@1', 'R@5', 'R@10'}
  assert by_protocol['retrieval']['settings']['ties'] == 'lower gallery index first'
  picture = by_protocol['retrieval']['settings']['picture']
  with open(picture, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert 'retrieval' in open(os.path.join(run_dir, 'eval', 'results.md')).read()
  features = np.load(os.path.join(run_dir, 'eval', 'features_test_step3.npz'))
  assert len(features['features']) == NUM_CLASSES * 3  # every test video once, no padding
  np.testing.assert_array_equal(features['video_index'], np.arange(NUM_CLASSES * 3))


def _finetune_config(records_dir, name, num_epochs):
  config = finetune_synthetic.get_config()
  config.name = name
  config.init = 'random'
  config.data.records_dir = records_dir
  config.data.image_size = 48
  config.data.crop_size = 48
  config.data.resize_short_side = 56
  config.data.frame_size = (60, 80)  # about the test frames' scale (short side 56)
  config.data.test_frames = 4
  config.batch_size = 8
  config.test_batch_size = 8
  config.num_epochs = num_epochs
  config.dropout = 0.0
  config.optim.base_lr = 0.03
  config.optim.decay_epochs = (32,)
  config.checkpoint.async_save = False
  config.checkpoint.every_steps = 1000
  return config


def test_tsn_finetune_beats_chance_and_resumes(records_dir, run_dir):
  # 36 training videos, batch 8: 4 steps per epoch; 12 test videos, chance 1/4.
  straight = _finetune_config(records_dir, 'straight', 40)
  straight.checkpoint.every_steps = 20
  straight.checkpoint.keep_every_steps = 20  # all kept: steps 80 and 100 are used below
  metrics = finetune.run_finetune(straight, run_dir, log=quiet)
  assert metrics['top1'] > 1 / NUM_CLASSES, metrics
  straight_dir = finetune.finetune_dir(run_dir, 'straight')
  assert os.path.exists(os.path.join(straight_dir, 'curves.png'))
  # 36 videos are too few for a from-scratch network to generalise far; on the videos it saw,
  # through the same test protocol, it must be clearly right. The finished run resumes at
  # its last step, so this only tests.
  seen = _finetune_config(records_dir, 'straight', 40)
  seen.data.test_split = 'train'
  assert finetune.run_finetune(seen, run_dir, log=quiet)['top1'] >= 0.75
  # A run killed right after its save at step 80 (epoch 20, the step decay still ahead): its
  # checkpoints are the straight run's up to there. Resumed to epoch 25, it must end where the
  # straight run was at step 100.
  interrupted_checkpoints = os.path.join(finetune.finetune_dir(run_dir, 'interrupted'),
                                         checkpointing.CHECKPOINT_DIR)
  shutil.copytree(os.path.join(straight_dir, checkpointing.CHECKPOINT_DIR, '80'),
                  os.path.join(interrupted_checkpoints, '80'))
  lines = []
  finetune.run_finetune(_finetune_config(records_dir, 'interrupted', 25), run_dir,
                        log=lines.append)
  assert any('Resumed fine-tuning' in line and 'step 80' in line for line in lines)
  straight_params, straight_step = _params(straight_dir, 100)
  resumed, resumed_step = _params(finetune.finetune_dir(run_dir, 'interrupted'), None)
  assert straight_step == resumed_step == 100
  # The same process, the same compiled step and the same batches: bit for bit.
  jax.tree.map(np.testing.assert_array_equal, straight_params, resumed)


def _params(finetune_dir, step):
  variables, step = checkpointing.load_encoder_variables(finetune_dir, step)
  return variables['params'], step


def test_a_3d_run_is_evaluated_and_fine_tuned_on_clips(records_dir, tmp_path):
  """An R3D-18 run: features average the run's clips (each clip's feature taken alone here),
  linear, retrieval and random init work on clips and record them, and TSN fine-tunes the
  pretrained 3D backbone on one clip a segment."""
  run_config = tiny_config(**{'model.architecture': 'r3d_18', 'model.width_multiplier': 0.0625,
                              'data.clip_length': 2, 'data.clip_stride': 2,
                              'data.image_size': 80})
  run = make_encoder_run(tmp_path / 'run3d', run_config, step=2)
  config = _eval_config(records_dir)
  config.data.num_frames, config.data.crop_size, config.data.resize_short_side = 3, 80, 88
  protocols.run_linear(config, run, log=quiet)
  entry, = json.loads((tmp_path / 'run3d' / 'eval' / 'results.json').read_text())
  assert entry['settings']['clip_length'] == 2 and entry['settings']['clip_stride'] == 2
  cached = np.load(tmp_path / 'run3d' / 'eval' / 'features_test_step2.npz')
  encoder = protocols.load_encoder(config, run)
  clip_features = jax.jit(lambda clip: encoder.model.apply(
      encoder.variables, augment.normalize_uint8(clip), train=False, method='features'))
  batch = next(iter(eval_reader.make_eval_iterator(
      records_dir, 'test', batch_size=4, num_frames=3, crop_size=80, resize_short_side=88,
      clip_length=2, clip_stride=2, process_index=0, process_count=1)))
  assert batch['frames'].shape == (4, 3, 2, 80, 80, 3)
  for clips, index in zip(batch['frames'], batch['video_index']):
    expected = np.mean([clip_features(clip[None])[0] for clip in clips], axis=0)
    np.testing.assert_allclose(cached['features'][index], expected, rtol=1e-4, atol=1e-5)
  config.random_init = True
  assert set(protocols.run_retrieval(config, run, log=quiet)) == {'R@1', 'R@5', 'R@10'}
  finetune_config = _finetune_config(records_dir, 'clips', 2)
  finetune_config.init = 'pretrained'
  finetune_config.data.test_frames = 3
  metrics = finetune.run_finetune(finetune_config, run, log=quiet)
  assert 0 <= metrics['top1'] <= metrics['top5'] <= 1
  entries = json.loads((tmp_path / 'run3d' / 'eval' / 'results.json').read_text())
  assert entries[-1]['settings']['clip_length'] == 2
  finetuned, _ = _params(finetune.finetune_dir(run, 'clips'), None)
  assert finetuned['backbone']['stem_0']['kernel'].ndim == 5  # (T, H, W, in, out)
  # Grad-CAM draws frames: it refuses the fine-tuned 3D network as it does the pretrained one.
  with pytest.raises(UserError, match="architecture='r3d_18'.*Grad-CAM"):
    visualize.load_source(finetune.finetune_dir(run, 'clips'))
