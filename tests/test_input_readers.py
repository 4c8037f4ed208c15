"""Readers on the prepared synthetic set: layout, determinism, resuming, per-host sharding."""

import os

import numpy as np
import pytest

from input_pipeline import eval_reader
from input_pipeline import record_stream
from input_pipeline import records
from input_pipeline import synthetic
from input_pipeline import train_reader
from input_pipeline import tsn_reader
from vclr_jax import batch as batch_layout

BATCH, FRAME_SIZE = 4, (24, 32)
# 10 classes x 2 training videos in shards of 3: 7 shards; cycle_length 2 makes 4 groups.
STREAM = record_stream.ReaderOptions(cycle_length=2, shuffle_buffer=4)
READER_OPTIONS = dict(batch_size=BATCH, frame_size=FRAME_SIZE, options=STREAM, process_index=0,
                      process_count=1)


@pytest.fixture(scope='module')
def records_dir(tmp_path_factory):
  return synthetic.prepare_synthetic(str(tmp_path_factory.mktemp('synthetic')), num_classes=10,
                                     videos_per_class=3, videos_per_shard=3)


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_batches_follow_the_layout(records_dir):
  batch = next(train_reader.make_train_iterator(records_dir, 'train', seed=0, **READER_OPTIONS))
  batch_layout.check_batch(batch, BATCH, FRAME_SIZE)
  np.testing.assert_array_equal(
      batch['order_label'], batch_layout.order_label(batch['query_perm'], batch['key_perm']))
  # Real frames resized onto the canvas: not constant, and six different frames per video.
  assert batch['frames'].std() > 20
  for example in batch['frames']:
    assert len({frame.tobytes() for frame in example}) == 6


def test_same_seed_same_batches_and_resume_continues_the_sequence(records_dir):
  # 20 training videos / 4 = 5 batches an epoch: step 7 is inside epoch 1, past a group.
  steps = 9
  uninterrupted = _take(train_reader.make_train_iterator(records_dir, 'train', seed=5,
                                                         **READER_OPTIONS), steps)
  one_thread = dict(READER_OPTIONS, options=record_stream.ReaderOptions(
      cycle_length=2, shuffle_buffer=4, num_parallel_calls=1))
  again = _take(train_reader.make_train_iterator(records_dir, 'train', seed=5, **one_thread),
                steps)
  _assert_same_batches(uninterrupted, again)
  other_seed = next(train_reader.make_train_iterator(records_dir, 'train', seed=6,
                                                     **READER_OPTIONS))
  assert not np.array_equal(other_seed['frames'], uninterrupted[0]['frames'])
  for start_step in (3, 7):
    resumed = _take(train_reader.make_train_iterator(
        records_dir, 'train', seed=5, start_step=start_step, **READER_OPTIONS),
                    steps - start_step)
    _assert_same_batches(resumed, uninterrupted[start_step:])


def _epoch_video_indices(records_dir, process_index, process_count, epochs=1):
  shards, _, _ = record_stream.host_shards(records_dir, 'train', process_index, process_count)
  host_videos = sum(shard['num_videos'] for shard in shards)
  stream = record_stream.example_stream(
      shards, seed=0, process_index=process_index, start_example=0,
      options=STREAM)
  return [int(records.parse_video(element['serialized'])['video_index'])
          for _, element in stream.take(epochs * host_videos)]


def test_hosts_read_disjoint_shards_that_cover_the_split(records_dir):
  index = records.read_index(records_dir, 'train')
  host_shards = [record_stream.host_shards(records_dir, 'train', i, 2)[0] for i in range(2)]
  paths = [{shard['path'] for shard in shards} for shards in host_shards]
  assert not paths[0] & paths[1]
  assert paths[0] | paths[1] == {shard['path'] for shard in index['shards']}
  videos = [_epoch_video_indices(records_dir, i, 2) for i in range(2)]
  for host_videos in videos:
    assert len(host_videos) == len(set(host_videos))  # An epoch shows every video once.
  assert not set(videos[0]) & set(videos[1])
  assert len(videos[0]) + len(videos[1]) == index['num_videos']
  # Epochs are reshuffled.
  two_epochs = _epoch_video_indices(records_dir, 0, 1, epochs=2)
  assert sorted(two_epochs[:20]) == sorted(two_epochs[20:]) and two_epochs[:20] != two_epochs[20:]


def test_eval_reader_counts_every_video_once_over_hosts(records_dir):
  index = records.read_index(records_dir, 'train')
  expected_batches = eval_reader.num_eval_batches(records_dir, 'train', batch_size=3,
                                                  process_count=2)
  seen = []
  for host in range(2):
    batches = list(eval_reader.make_eval_iterator(
        records_dir, 'train', batch_size=3, num_frames=4, crop_size=24, resize_short_side=32,
        process_index=host, process_count=2))
    assert len(batches) == expected_batches
    for batch in batches:
      assert batch['frames'].shape == (3, 4, 24, 24, 3) and batch['frames'].dtype == np.uint8
      assert batch['label'].dtype == np.int32 and batch['video_index'].dtype == np.int32
      assert np.all(batch['label'][~batch['mask']] == -1)
      seen += list(zip(batch['video_index'][batch['mask']], batch['label'][batch['mask']]))
  assert len(seen) == index['num_videos'] == len({video for video, _ in seen})
  # Synthetic lists: class-major, 2 training videos per class.
  assert all(label == video // 2 for video, label in seen)


def test_tsn_train_batches(records_dir):
  batch = next(tsn_reader.make_tsn_train_iterator(
      records_dir, 'train', batch_size=BATCH, frame_size=FRAME_SIZE, num_segments=3, seed=0,
      process_index=0, process_count=1))
  assert batch['frames'].shape == (BATCH, 3) + FRAME_SIZE + (3,)
  assert batch['frames'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and np.all((0 <= batch['label']) & (batch['label'] < 10))
  assert np.all(batch['label'] == batch['video_index'] // 2)


@pytest.mark.parametrize('source_size', [(96, 128), (112, 112), (128, 96), (150, 200)])
def test_canvas_keeps_the_aspect_ratio_like_pil_fit(source_size):
  from PIL import Image, ImageOps
  from input_pipeline import frame_decoding
  height, width = source_size
  yy, xx = np.mgrid[0:height, 0:width]
  # Smooth content with a feature whose shape would change if the frame were stretched.
  image = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0),
                    255.0 * ((yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (height / 4) ** 2)],
                   -1).astype(np.uint8)
  canvas = (120, 160)
  ours = frame_decoding.fill_canvas(image, canvas).numpy()
  reference = np.asarray(ImageOps.fit(Image.fromarray(image), canvas[::-1],
                                      method=Image.BILINEAR))
  assert ours.shape == reference.shape == (120, 160, 3)
  # PIL resizes the cropped region, we crop the resized frame: edges differ by a pixel.
  diff = np.abs(ours.astype(float) - reference)
  assert diff[4:-4, 4:-4].mean() < 3.0, diff.mean()


def test_video_jpegs_finds_a_video_by_its_number(records_dir):
  import tensorflow as tf
  split = os.path.join(records_dir, 'train')
  index = records.read_index(records_dir, 'train')
  last = index['num_videos'] - 1
  # Independently: the last record of the last shard is the split's last video.
  serialized = list(tf.data.TFRecordDataset(index['shards'][-1]['path']).as_numpy_iterator())[-1]
  expected = records.parse_video(serialized)
  jpegs = records.video_jpegs(split, int(expected['video_index'].numpy()))
  assert jpegs == [bytes(f) for f in expected['frames'].numpy()]
  with pytest.raises(ValueError, match='--video_index=.*indices 0 to'):
    records.video_jpegs(split, last + 1)
