"""Snippet features: one CSV per video in mmaction2's layout, rows at the snippet centres,
rescaled by linear interpolation; checked against NumPy references on the synthetic records."""

import json
import os

import numpy as np
import pytest

from configs import snippet_features
from conftest import tiny_config
from eval_fixtures import make_encoder_run
from input_pipeline import records
from input_pipeline import synthetic
from vclr_jax import augment
from vclr_jax import checkpointing
from vclr_jax import train_state
from vclr_jax.evaluation import snippets
from vclr_jax.models.resnet import feature_dim

STRIDE = 4
CROP = 80


@pytest.fixture(scope='module')
def records_dir(tmp_path_factory):
  return synthetic.prepare_synthetic(str(tmp_path_factory.mktemp('synthetic')), num_classes=2,
                                     videos_per_class=4, videos_per_shard=4)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  return make_encoder_run(tmp_path_factory.mktemp('run'), tiny_config(), step=2)


def _config(records_dir, num_positions):
  config = snippet_features.get_config()
  config.data.records_dir = records_dir
  config.data.crop_size = CROP
  config.data.resize_short_side = 0  # crop the stored frames as they are: easy to reproduce
  config.snippets.splits = 'test'
  config.snippets.stride = STRIDE
  config.snippets.num_positions = num_positions
  config.snippets.batch_size = 8
  return config


def _read_csv(path):
  with open(path) as f:
    header = f.readline().strip().split(',')
  return header, np.loadtxt(path, dtype=np.float32, delimiter=',', skiprows=1, ndmin=2)


def _test_videos(records_dir):
  """{video_id: (T, H, W, 3) uint8 frames} of every test video, read straight from the shards
  (decoded with TensorFlow's JPEG decoder, as the readers do: PIL's differs by a few levels)."""
  import tensorflow as tf
  videos = {}
  for shard in records.read_index(records_dir, 'test')['shards']:
    for serialized in tf.data.TFRecordDataset(shard['path']).as_numpy_iterator():
      example = tf.train.SequenceExample.FromString(serialized)
      name = example.context.feature[records.FILENAME_KEY].bytes_list.value[0].decode()
      jpegs = example.feature_lists.feature_list[records.IMAGE_KEY].feature
      videos[os.path.splitext(os.path.basename(name))[0]] = np.stack(
          [tf.io.decode_jpeg(f.bytes_list.value[0], channels=3).numpy() for f in jpegs])
  return videos


def _reference_features(run_dir, frames):
  """The run's pooled backbone features of (N, H, W, 3) frames, centre-cropped in NumPy."""
  run_config = checkpointing.load_run_config(run_dir)
  model = train_state.build_model(run_config.model)
  variables, _ = checkpointing.load_encoder_variables(run_dir)
  top = (frames.shape[1] - CROP) // 2
  left = (frames.shape[2] - CROP) // 2
  crops = frames[:, top:top + CROP, left:left + CROP]
  return np.asarray(model.apply(variables, augment.normalize_uint8(crops), train=False,
                                method='features'))


def test_snippet_features_rows_are_snippet_centres_and_rescale_linearly(records_dir, run_dir):
  out_root = snippets.run_snippet_features(_config(records_dir, 0), run_dir, log=lambda _: None)
  out_dir = os.path.join(out_root, 'test')
  videos = _test_videos(records_dir)
  assert sorted(name for name in os.listdir(out_dir) if name.endswith('.csv')) == sorted(
      f'{name}.csv' for name in videos)
  with open(os.path.join(out_dir, 'video_info.json')) as f:
    info = json.load(f)
  dim = feature_dim(18, 0.125)
  per_snippet = {}
  for name, frames in videos.items():
    header, rows = _read_csv(os.path.join(out_dir, f'{name}.csv'))
    num_frames = len(frames)
    centres = np.minimum(np.arange(0, num_frames, STRIDE) + STRIDE // 2, num_frames - 1)
    assert header == [f'f{i}' for i in range(dim)]
    assert rows.shape == (-(-num_frames // STRIDE), dim)
    assert info['videos'][name]['duration_frame'] == num_frames
    assert info['videos'][name]['num_snippets'] == len(centres)
    np.testing.assert_allclose(rows, _reference_features(run_dir, frames[centres]),
                               rtol=1e-4, atol=1e-4)
    per_snippet[name] = rows

  num_positions = 7
  snippets.run_snippet_features(_config(records_dir, num_positions), run_dir, log=lambda _: None)
  for name, rows in per_snippet.items():
    _, rescaled = _read_csv(os.path.join(out_dir, f'{name}.csv'))
    points = np.linspace(0, len(rows) - 1, num_positions)
    expected = np.stack([np.interp(points, np.arange(len(rows)), column) for column in rows.T],
                        axis=1)
    np.testing.assert_allclose(rescaled, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('length,num_positions', [(1, 5), (9, 100), (250, 100)])
def test_rescale_is_numpy_interpolation(length, num_positions):
  sequence = np.random.default_rng(length).normal(size=(length, 6)).astype(np.float32)
  expected = np.stack([np.interp(np.linspace(0, length - 1, num_positions), np.arange(length), c)
                       for c in sequence.T], axis=1)
  np.testing.assert_allclose(snippets.rescale(sequence, num_positions), expected, rtol=1e-6,
                             atol=1e-6)
