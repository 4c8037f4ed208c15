"""The frame index: byte ranges that give back every JPEG of every record, and the reader on it."""

import os

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import damage
from input_pipeline import frame_index
from input_pipeline import record_stream
from input_pipeline import records
from input_pipeline import synthetic
from input_pipeline import train_reader


@pytest.fixture(scope='module')
def records_dir(tmp_path_factory):
  return synthetic.prepare_synthetic(str(tmp_path_factory.mktemp('synthetic')), num_classes=3,
                                     videos_per_class=3, videos_per_shard=2)


def _parsed_frames(shard_path):
  """Every record's JPEGs, parsed the ordinary way (TFRecordDataset + protobuf)."""
  videos = []
  for serialized in tf.data.TFRecordDataset(shard_path):
    videos.append(list(records.parse_video(serialized)['frames'].numpy()))
  return videos


def test_index_reads_back_every_frame_of_every_record(records_dir):
  shards = records.read_index(records_dir, 'train')['shards']
  host = frame_index.HostFrames([shard['path'] for shard in shards])
  expected = [video for shard in shards for video in _parsed_frames(shard['path'])]
  assert len(expected) == len(host.frames_per_video) == sum(s['num_videos'] for s in shards)
  for video, jpegs in enumerate(expected):
    assert host.frames_per_video[video] == len(jpegs)
    assert host.read(video, np.arange(len(jpegs))) == (jpegs, damage.OK)
  assert host.videos_per_shard.tolist() == [s['num_videos'] for s in shards]


def test_index_of_existing_records_is_rebuilt_identically(records_dir, tmp_path):
  shard = records.read_index(records_dir, 'train')['shards'][0]['path']
  with open(frame_index.index_path(shard), 'rb') as f:
    written = dict(np.load(f))
  os.remove(frame_index.index_path(shard))
  frame_index.main([f'--records={records_dir}', '--splits=train'])
  with open(frame_index.index_path(shard), 'rb') as f:
    rebuilt = dict(np.load(f))
  assert written.keys() == rebuilt.keys()
  for name in written:
    np.testing.assert_array_equal(rebuilt[name], written[name])


def test_reader_without_index_names_the_file_and_the_fix(records_dir, tmp_path):
  copy = tmp_path / 'copy'
  tf.io.gfile.makedirs(str(copy / 'train'))
  for name in tf.io.gfile.listdir(os.path.join(records_dir, 'train')):
    if not name.endswith(frame_index.SUFFIX):
      tf.io.gfile.copy(os.path.join(records_dir, 'train', name), str(copy / 'train' / name))
  with pytest.raises(FileNotFoundError, match=r'frames\.npz is missing.*input_pipeline\.frame_index'):
    train_reader.make_train_iterator(str(copy), 'train', batch_size=2, frame_size=(24, 32),
                                     seed=0, process_index=0, process_count=1)


def _train_iterator(records_dir, num_parallel_calls):
  """A small training iterator over the fixture's records, and its SampledFrameReader."""
  stats = []
  iterator = train_reader.make_train_iterator(
      records_dir, 'train', batch_size=3, frame_size=(24, 32), seed=0, process_index=0,
      process_count=1, options=record_stream.ReaderOptions(
          cycle_length=2, shuffle_buffer=4, num_parallel_calls=num_parallel_calls, prefetch=1),
      reader_stats=stats)
  return iterator, stats[0]


def test_reader_reads_only_the_six_sampled_frames(records_dir):
  iterator, reader = _train_iterator(records_dir, num_parallel_calls=1)
  next(iterator)
  assert reader.examples_read >= 3
  per_example = reader.bytes_read / reader.examples_read
  shards = records.read_index(records_dir, 'train')['shards']
  record_bytes = sum(os.path.getsize(s['path']) for s in shards) / sum(
      s['num_videos'] for s in shards)
  mean_jpeg = reader.frames.lengths.mean()
  # Six JPEGs of average size, give or take their spread; a record holds all of its frames.
  assert 6 * reader.frames.lengths.min() <= per_example <= 6 * reader.frames.lengths.max()
  assert per_example < record_bytes * 6 / reader.frames.frames_per_video.min() + 1
  assert mean_jpeg * reader.frames.frames_per_video.mean() < record_bytes


def _open_files_under(folder):
  """How many of this process's file descriptors are open on files under ``folder``."""
  count = 0
  for fd in os.listdir('/proc/self/fd'):
    try:
      count += os.readlink(os.path.join('/proc/self/fd', fd)).startswith(folder)
    except OSError:  # closed meanwhile (the listing's own descriptor)
      pass
  return count


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='counts descriptors in /proc')
def test_reading_keeps_one_open_file_per_shard(records_dir):
  # Reads come through tf.py_function on TensorFlow's threads: 60 examples (10 epochs of
  # these 6 training videos) must not open a file per read.
  train_dir = os.path.realpath(os.path.join(records_dir, 'train'))
  num_shards = len(records.read_index(records_dir, 'train')['shards'])
  before = _open_files_under(train_dir)  # earlier tests' readers may still hold theirs
  iterator, reader = _train_iterator(records_dir, num_parallel_calls=2)
  for _ in range(20):
    next(iterator)
  assert reader.examples_read >= 60
  assert _open_files_under(train_dir) - before <= num_shards
  reader.frames.close()
  assert _open_files_under(train_dir) <= before
