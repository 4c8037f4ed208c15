"""The TFDS dataset vclr_videos (input_pipeline/vclr_videos) on synthetic videos laid out as
UCF101: the examples of preparation, the readers on it, a training run from it through
config.data.source='tfds', its errors."""

import importlib
import os
import re

import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import eval_ucf101
from conftest import NO_BLUR, tiny_config
from input_pipeline import eval_reader
from input_pipeline import frame_index
from input_pipeline import prepare
from input_pipeline import records
from input_pipeline import sources
from input_pipeline import synthetic
from input_pipeline.vclr_videos import vclr_videos_dataset_builder
from vclr_jax import config_checks
from vclr_jax.cli_errors import ConfigError

# 4 classes x 4 videos: 12 training videos (one step of the tiny config's batch of 8), 4 test.
NUM_CLASSES, VIDEOS_PER_CLASS = 4, 4
CONFIG = 'ucf101_split1'
TFDS_NAME = f'vclr_videos/{CONFIG}'  # config.data.tfds_name
build_cli = importlib.import_module('input_pipeline.vclr_videos.__main__')


def _write_ucf101_lists(videos_dir, lists_dir):
  """UCF101's split files (1-based classInd.txt, trainlist01 with labels, testlist01 without)
  for the synthetic videos, whose folders are already UCF-101/<Class>/<video>."""
  os.makedirs(lists_dir)
  with open(os.path.join(videos_dir, 'classes.txt')) as f:
    class_names = [line.strip() for line in f if line.strip()]
  with open(os.path.join(lists_dir, 'classInd.txt'), 'w') as f:
    f.writelines(f'{number} {name}\n' for number, name in enumerate(class_names, 1))
  for split in ('train', 'test'):
    with open(os.path.join(videos_dir, f'{split}.txt')) as f:
      rows = [line.split() for line in f if line.strip()]
    with open(os.path.join(lists_dir, f'{split}list01.txt'), 'w') as f:
      f.writelines(f'{name} {int(label) + 1}\n' if split == 'train' else f'{name}\n'
                   for name, label in rows)


@pytest.fixture(scope='module')
def manual_dir(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp('manual'))
  videos_dir = synthetic.generate(os.path.join(manual, 'UCF-101'), num_classes=NUM_CLASSES,
                                  videos_per_class=VIDEOS_PER_CLASS, show_progress=False)
  _write_ucf101_lists(videos_dir, os.path.join(manual, 'ucfTrainTestlist'))
  return manual


@pytest.fixture(scope='module')
def tfds_data_dir(tmp_path_factory):
  """TFDS's data_dir (config.data.tfds_data_dir); the tfds_dir fixture builds the dataset."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def tfds_dir(manual_dir, tfds_data_dir):
  """The built dataset's version folder, built by the documented command (in this process)."""
  return build_cli.main([f'--config={CONFIG}', f'--manual_dir={manual_dir}',
                         f'--data_dir={tfds_data_dir}', '--workers=1'])


@pytest.fixture(scope='module')
def records_dir(manual_dir, tmp_path_factory):
  """The same videos prepared by python -m input_pipeline.prepare, with the config's options."""
  out = str(tmp_path_factory.mktemp('records'))
  config = next(c for c in vclr_videos_dataset_builder.Builder.BUILDER_CONFIGS if c.name == CONFIG)
  for split in ('train', 'test'):
    listing = sources.list_source(
        'ucf101', split=split, root=os.path.join(manual_dir, 'UCF-101'),
        splits_dir=os.path.join(manual_dir, 'ucfTrainTestlist'), split_number=1)
    prepare.prepare_split(listing, out_dir=out, split=split, options=config.options,
                          videos_per_shard=5, num_shards=None, seed=0,
                          source_description={'source': 'ucf101'}, show_progress=False)
  return out


def _fields(index):
  """Every record of a split, by video index: {record key: its values}, read from the protos."""
  videos = {}
  for shard in index['shards']:
    for serialized in tf.data.TFRecordDataset(shard['path']).as_numpy_iterator():
      if index['record_format'] == records.SEQUENCE_EXAMPLE:
        example = tf.train.SequenceExample.FromString(serialized)
        features = {key: feature for key, feature in example.context.feature.items()
                    if key != records.NUM_FRAMES_KEY}
        frames = example.feature_lists.feature_list[records.IMAGE_KEY].feature
        assert example.context.feature[records.NUM_FRAMES_KEY].int64_list.value == [len(frames)]
        fields = {records.IMAGE_KEY: [frame.bytes_list.value[0] for frame in frames]}
      else:
        example = tf.train.Example.FromString(serialized)
        features = {key: example.features.feature[name]
                    for key, name in records.TFDS_FEATURES.items() if key != records.IMAGE_KEY}
        fields = {records.IMAGE_KEY: list(example.features.feature[
            records.TFDS_FEATURES[records.IMAGE_KEY]].bytes_list.value)}
      for key, feature in features.items():
        fields[key] = list(getattr(feature, feature.WhichOneof('kind')).value)
      videos[fields[records.VIDEO_INDEX_KEY][0]] = fields
  return videos


@pytest.mark.parametrize('split', ['train', 'test'])
def test_tfds_build_gives_the_examples_of_prepare(tfds_dir, records_dir, split):
  built, prepared = records.read_index(tfds_dir, split), records.read_index(records_dir, split)
  assert built['record_format'] == records.TFDS_EXAMPLE
  videos_per_class = 3 if split == 'train' else 1  # synthetic: a quarter of each class is test
  assert built['num_videos'] == prepared['num_videos'] == NUM_CLASSES * videos_per_class
  assert built['class_names'] == prepared['class_names'] == synthetic.class_names(NUM_CLASSES)
  assert sum(shard['num_videos'] for shard in built['shards']) == built['num_videos']
  built_videos, prepared_videos = _fields(built), _fields(prepared)
  assert sorted(built_videos) == sorted(prepared_videos) == list(range(built['num_videos']))
  for video_index, fields in prepared_videos.items():
    # Every field, the JPEG bytes of every frame included.
    assert built_videos[video_index] == fields, video_index
  # The frame index the builder wrote while TFDS wrote each file equals one read back from it.
  for shard in built['shards']:
    saved = frame_index.read_index_file(shard['path'])
    rebuilt = frame_index.index_of_shard(shard['path'], records.TFDS_EXAMPLE).arrays()
    for name, array in rebuilt.items():
      np.testing.assert_array_equal(saved[name], array, err_msg=name)


def test_tfds_name_names_the_version_folder_of_the_build(tfds_dir, tfds_data_dir):
  assert records.tfds_version_dir(TFDS_NAME, tfds_data_dir) == tfds_dir
  assert records.tfds_version_dir(f'{TFDS_NAME}:1.0.0', tfds_data_dir) == tfds_dir


def test_the_evaluation_reader_reads_the_same_videos_from_both(tfds_dir, tfds_data_dir,
                                                               records_dir):
  def videos(**source):
    """The test split as the evaluation protocols read it for an eval config's data block."""
    data = eval_ucf101.get_config().data
    data.update(source)
    read = {}
    for batch in eval_reader.make_eval_iterator(records.source_dir(data), 'test', batch_size=3,
                                                num_frames=4, crop_size=72, process_index=0,
                                                process_count=1):
      for row in np.flatnonzero(batch['mask']):
        read[int(batch['video_index'][row])] = (int(batch['label'][row]), batch['frames'][row])
    return read

  built = videos(source='tfds', tfds_name=TFDS_NAME, tfds_data_dir=tfds_data_dir)
  prepared = videos(source='records', records_dir=records_dir)
  assert sorted(built) == sorted(prepared) == list(range(NUM_CLASSES))
  for video_index, (label, frames) in prepared.items():
    assert built[video_index][0] == label
    np.testing.assert_array_equal(built[video_index][1], frames)


def test_a_short_training_run_reads_the_tfds_dataset(tfds_dir, tfds_data_dir, tmp_path):
  from vclr_jax import train
  # One step per epoch and 3 epochs, as the training run of test_input_damage.py: the same
  # state initialisation and train step, which the test run's compilation cache compiles once.
  # Measured on 2 busy cores: 42 s alone, 23 of them initialising and compiling; 21 s after
  # that test.
  config = tiny_config(**{'data.source': 'tfds', 'data.tfds_name': TFDS_NAME,
                          'data.tfds_data_dir': tfds_data_dir, 'num_epochs': 3,
                          'log_every_steps': 1, **NO_BLUR})
  metrics = train.train_and_evaluate(config, str(tmp_path / 'run'), argv=[])
  assert metrics and all(np.isfinite(value) for value in metrics.values()), metrics
  assert (tmp_path / 'run' / 'checkpoints' / '3').is_dir()  # 12 videos, batch 8: 3 steps


def test_a_missing_manual_file_names_the_path_and_what_to_put_there(manual_dir, tmp_path):
  incomplete = tmp_path / 'manual'
  (incomplete / 'ucfTrainTestlist').mkdir(parents=True)
  os.symlink(os.path.join(manual_dir, 'UCF-101'), incomplete / 'UCF-101')
  for name in ('classInd.txt', 'trainlist01.txt'):
    os.symlink(os.path.join(manual_dir, 'ucfTrainTestlist', name),
               incomplete / 'ucfTrainTestlist' / name)
  with pytest.raises(SystemExit) as raised:
    build_cli.main([f'--config={CONFIG}', f'--manual_dir={incomplete}',
                    f'--data_dir={tmp_path / "tfds"}', '--workers=1'])
  message = str(raised.value.code)
  assert str(incomplete / 'ucfTrainTestlist' / 'testlist01.txt') in message
  assert 'ucfTrainTestlist/ (classInd.txt, trainlist01.txt, testlist01.txt)' in message


def test_a_dataset_not_built_names_the_command_that_builds_it(tfds_dir, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  command = (f'python -m input_pipeline.vclr_videos --config=hmdb51_split1 '
             f'--manual_dir=MANUAL_DIR --data_dir={data_dir}')
  with pytest.raises(FileNotFoundError, match=re.escape(command)):
    records.read_index(os.path.join(data_dir, 'vclr_videos', 'hmdb51_split1', '1.0.0'), 'train')
  # The config's folder instead of its version folder: the error names the version folder.
  with pytest.raises(FileNotFoundError, match=re.escape(f'{tfds_dir}: pass that version folder')):
    records.read_index(os.path.dirname(tfds_dir), 'train')


def test_the_config_check_names_the_tfds_key_and_what_to_do(tfds_dir, tfds_data_dir):
  def problems(**data):
    config = tiny_config(**{'data.source': 'tfds', 'data.tfds_data_dir': tfds_data_dir,
                            **{f'data.{key}': value for key, value in data.items()}})
    with pytest.raises(ConfigError) as raised:
      config_checks.validate_config(config, jax.device_count(), jax.process_count())
    return raised.value.problems

  configs = 'kinetics400, ucf101_split1, hmdb51_split1, folder'
  for name in ('', 'vclr_videos/ucf101', 'ucf101_split1'):
    assert problems(tfds_name=name) == [
        f"config.data.tfds_name={name!r} is not a config of the TFDS dataset vclr_videos: with "
        "config.data.source='tfds', give vclr_videos/<config>[:<version>], <config> one of "
        f'{configs}.']
  [not_built] = problems(tfds_name='vclr_videos/hmdb51_split1')
  assert not_built.startswith('config.data.tfds_name=vclr_videos/hmdb51_split1 is not built in '
                              f'config.data.tfds_data_dir={tfds_data_dir} ')
  assert not_built.endswith('Build it with `python -m input_pipeline.vclr_videos '
                            '--config=hmdb51_split1 --manual_dir=MANUAL_DIR '
                            f'--data_dir={tfds_data_dir}` (docs/data.md, TFDS).')
  # Another version than the one built: the message names the built one.
  [other_version] = problems(tfds_name=f'{TFDS_NAME}:2.0.0')
  assert 'Built there: version 1.0.0 (add :<version> to config.data.tfds_name' in other_version
