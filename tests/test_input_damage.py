"""Damaged records: skipped, counted, named, deterministic; verify; prepare reruns.

One tiny prepared set (12 videos of 6 frames, 3 per shard); copies of it get one shard damaged
three ways. Six frames per video means the training reader samples every frame, so which
videos a damage reaches follows from byte offsets alone, computed here from the file.
"""

import logging
import os
import re
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf

from frame_folders import prepare_argv, write_frame_folders
from input_pipeline import damage
from input_pipeline import eval_reader
from input_pipeline import frame_index
from input_pipeline import prepare
from input_pipeline import record_stream
from input_pipeline import records
from input_pipeline import train_reader
from input_pipeline import tsn_reader
from input_pipeline import verify

NUM_VIDEOS, FRAMES, BATCH = 15, 6, 5  # 5 shards of 3 videos
DAMAGE = {1: 'truncated', 2: 'garbage', 3: 'bad_jpeg'}  # shard -> damage; shard 0 and 4 stay good
OPTIONS = record_stream.ReaderOptions(cycle_length=2, shuffle_buffer=4, max_skipped_fraction=1.0)
TRAIN = dict(batch_size=BATCH, frame_size=(40, 56), seed=3, process_index=0, process_count=1,
             options=OPTIONS)
STEPS = 2 * NUM_VIDEOS // BATCH  # two epochs
# Damaged records of each damage, as the training reader (byte ranges of the sampled frames)
# and the whole-record readers (TFRecord framing: nothing after a bad record) see them.
TRAIN_DAMAGED = {'truncated': {1, 2}, 'garbage': {1}, 'bad_jpeg': {0}}
RECORD_DAMAGED = {'truncated': {1, 2}, 'garbage': {1, 2}, 'bad_jpeg': {0}}


def _expected(damaged_records):
  return {(shard, record) for shard, kind in DAMAGE.items() for record in damaged_records[kind]}


def _shard_paths(records_dir):
  return [shard['path'] for shard in records.read_index(records_dir, 'train')['shards']]


def _record_starts(path):
  """Byte offset of every record, from the TFRecord length headers (uint64 little endian)."""
  data = open(path, 'rb').read()
  starts, offset = [], 0
  while offset < len(data):
    starts.append(offset)
    offset += 12 + struct.unpack('<Q', data[offset:offset + 8])[0] + 4
  return starts


def _damage(path, kind):
  data = open(path, 'rb').read()
  starts = _record_starts(path)
  if kind == 'truncated':  # mid-file, 20 bytes into record 1
    data = data[:starts[1] + 20]
  elif kind == 'garbage':  # 4 KB inside record 1, the file keeps its size
    where = starts[1] + 100
    data = data[:where] + np.random.default_rng(0).bytes(4096) + data[where + 4096:]
  else:  # record 0 written with JPEGs cut short: valid CRCs, undecodable frames
    serialized = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    example = tf.train.SequenceExample.FromString(serialized[0])
    for frame in example.feature_lists.feature_list[records.IMAGE_KEY].feature:
      frame.bytes_list.value[0] = frame.bytes_list.value[0][:200]
    with tf.io.TFRecordWriter(path) as writer:
      for record in [example.SerializeToString()] + serialized[1:]:
        writer.write(record)
    frame_index.build_shard_index(path)
    return
  with open(path, 'wb') as f:
    f.write(data)


@pytest.fixture(scope='module')
def clean(tmp_path_factory):
  root = tmp_path_factory.mktemp('frames')
  write_frame_folders(str(root / 'videos'), [FRAMES] * NUM_VIDEOS)
  out = str(root / 'records')
  prepare.main(prepare_argv(str(root / 'videos'), out))
  return out


@pytest.fixture(scope='module')
def damaged(clean, tmp_path_factory):
  """A copy of ``clean`` with shards 1-3 damaged as DAMAGE says."""
  copy = str(tmp_path_factory.mktemp('damaged') / 'records')
  shutil.copytree(clean, copy)
  paths = _shard_paths(copy)
  for shard, kind in DAMAGE.items():
    _damage(paths[shard], kind)
  return copy


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_same(first, second):
  for a, b in zip(first, second, strict=True):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_training_reader_skips_counts_names_and_stays_deterministic(clean, damaged, caplog):
  reference = _take(train_reader.make_train_iterator(clean, 'train', **TRAIN), STEPS)
  with caplog.at_level(logging.WARNING):
    iterator = train_reader.make_train_iterator(damaged, 'train', **TRAIN)
    batches = _take(iterator, STEPS)
  expected = _expected(TRAIN_DAMAGED)
  assert set(iterator.damaged) == expected
  assert iterator.skipped_examples == 2 * len(expected)  # every damaged video once an epoch
  # Exactly the skipped rows differ from the undamaged run, each now a copy of a kept row.
  changed = 0
  for got, want in zip(batches, reference):
    for row in range(BATCH):
      if not np.array_equal(got['frames'][row], want['frames'][row]):
        changed += 1
        assert any(np.array_equal(got['frames'][row], want['frames'][other])
                   for other in range(BATCH) if other != row)
  assert changed == iterator.skipped_examples
  # One warning per damaged video, naming the shard file and the record.
  paths = _shard_paths(damaged)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and r.getMessage().startswith('Skipping record')]
  assert sorted(warnings) == sorted(
      f'Skipping record {record} of {paths[shard]}: {damage.REASONS[iterator.damaged[shard, record]]}.'
      for shard, record in expected)
  # A second run, resumed inside the first epoch, sees the same batches.
  resumed = train_reader.make_train_iterator(damaged, 'train', start_step=2, **TRAIN)
  _assert_same(_take(resumed, STEPS - 2), batches[2:])


def test_eval_and_tsn_readers_skip_what_they_cannot_read(clean, damaged):
  paths = _shard_paths(clean)
  expected = set()
  for shard, record in _expected(RECORD_DAMAGED):
    serialized = list(tf.data.TFRecordDataset(paths[shard]).as_numpy_iterator())[record]
    expected.add(int(records.parse_video(serialized)['video_index']))
  iterator = eval_reader.make_eval_iterator(
      damaged, 'train', batch_size=4, num_frames=3, crop_size=32, process_index=0,
      process_count=1, max_skipped_fraction=1.0)
  kept = [v for batch in iterator for v in batch['video_index'][batch['mask']]]
  assert sorted(kept) == sorted(set(range(NUM_VIDEOS)) - expected)
  assert iterator.skipped_examples == len(expected)
  tsn = tsn_reader.make_tsn_train_iterator(damaged, 'train', batch_size=BATCH,
                                           frame_size=(40, 56), num_segments=3, seed=0,
                                           process_index=0, process_count=1, options=OPTIONS)
  _take(tsn, NUM_VIDEOS // BATCH)
  assert tsn.skipped_examples == len(expected)


def _fake_batches(statuses):
  for status in statuses:
    size = len(status)
    yield {'frames': np.arange(size), 'status': np.asarray(status),
           'shard': np.zeros(size, np.int32), 'record': np.arange(size)}


def test_too_much_damage_stops_and_lists_the_shards():
  paths = ['/data/train/shard-00000-of-00001.tfrecord']
  bad = damage.UNDECODABLE
  statuses = [[0, bad, 0, 0], [0, bad, bad, 0], [bad, 0, 0, 0]]
  too_many = (r'(?s)2 damaged videos .*max_skipped_fraction=0.001.*'
              r'shard-00000-of-00001.tfrecord: 2 damaged')
  # Evaluation raises at once.
  evaluation = damage.SkippingBatches(_fake_batches(statuses), paths, split_videos=1000,
                                      max_skipped_fraction=0.001, fill=False)
  next(evaluation)  # 1 damaged: allowed
  with pytest.raises(damage.DamagedDataError, match=too_many):
    next(evaluation)
  # Training keeps its batches coming and sets stop_error, which the training loop turns into
  # a stop of every host at one saved step (tests/test_loop_stop.py).
  training = damage.SkippingBatches(_fake_batches(statuses), paths, split_videos=1000,
                                    max_skipped_fraction=0.001, fill=True)
  np.testing.assert_array_equal(next(training)['frames'], [0, 0, 2, 3])
  assert training.stop_error is None
  np.testing.assert_array_equal(next(training)['frames'], [0, 0, 3, 3])
  error = training.stop_error
  assert isinstance(error, damage.DamagedDataError) and re.search(too_many, str(error))
  np.testing.assert_array_equal(next(training)['frames'], [1, 1, 2, 3])
  assert training.stop_error is error and training.skipped_examples == 4
  # A batch without one undamaged example stops the run the same way, whatever the limit;
  # until the stop, the batch before it stands in.
  all_bad = damage.SkippingBatches(_fake_batches([[0, bad], [bad, bad]]), paths,
                                   split_videos=10, max_skipped_fraction=1.0, fill=True)
  np.testing.assert_array_equal(next(all_bad)['frames'], [0, 0])
  assert all_bad.stop_error is None
  np.testing.assert_array_equal(next(all_bad)['frames'], [0, 0])
  assert re.search('Every example of a batch is damaged', str(all_bad.stop_error))


def test_verify_flags_the_damaged_shards(damaged, capsys):
  assert verify.main([f'--records={damaged}', '--split=train']) == 1
  table = capsys.readouterr().out
  rows = {line.split()[1]: line for line in table.splitlines() if line.startswith('train ')}
  names = [os.path.basename(path) for path in _shard_paths(damaged)]
  assert [('DAMAGED' in rows[name]) for name in names] == [False, True, True, True, False]
  assert '2 good, 3 damaged of 5 shards' in table
  # --quick sees the changed size of the truncated and the rewritten shard (the garbage keeps
  # the size and, here, the record count).
  assert verify.main([f'--records={damaged}', '--quick']) == 1
  table = capsys.readouterr().out
  rows = {line.split()[1]: line for line in table.splitlines() if line.startswith('train ')}
  assert [('DAMAGED' in rows[name]) for name in names] == [False, True, False, True, False]


def test_verify_errors_name_the_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match='not a folder'):
    verify.main([f'--records={tmp_path / "missing"}'])
  with pytest.raises(FileNotFoundError, match='no prepared split'):
    verify.main([f'--records={tmp_path}'])


def test_training_run_on_damaged_records_finishes_and_logs_skips(damaged, tmp_path, caplog):
  import conftest
  from vclr_jax import train
  config = conftest.tiny_config(**{
      'data.source': 'records', 'data.records_dir': damaged, 'data.split': 'train',
      'data.max_skipped_fraction': 1.0, 'data.cycle_length': 2, 'data.shuffle_buffer': 4,
      'num_epochs': 3, 'log_every_steps': 1, **conftest.NO_BLUR})
  with caplog.at_level(logging.INFO):
    metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert metrics['skipped_examples'] > 0
  assert any('skipped_examples' in r.getMessage() for r in caplog.records)
  assert any(_shard_paths(damaged)[1] in r.getMessage() for r in caplog.records
             if r.levelno == logging.WARNING)


def test_prepare_rerun_rewrites_a_truncated_shard(tmp_path, capsys):
  write_frame_folders(str(tmp_path / 'videos'), [FRAMES] * 6)
  argv = prepare_argv(str(tmp_path / 'videos'), str(tmp_path / 'records'))
  prepare.main(argv)
  path = records.read_index(str(tmp_path / 'records'), 'train')['shards'][0]['path']
  original = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(original[:len(original) // 2])
  capsys.readouterr()
  prepare.main(argv)
  out = capsys.readouterr().out
  assert f'{path} does not match its summary ({len(original) // 2} bytes' in out
  assert '1 of 2 shards already finished' in out
  assert open(path, 'rb').read() == original
  assert verify.main([f'--records={tmp_path / "records"}']) == 0
  assert '2 good, 0 damaged of 2 shards' in capsys.readouterr().out


def test_reader_refuses_an_index_of_another_split(clean, tmp_path):
  shutil.copytree(os.path.join(clean, 'train'), tmp_path / 'test')
  with pytest.raises(ValueError, match=r"index\.json is the index of split 'train', but split "
                     r"'test' was asked for"):
    eval_reader.make_eval_iterator(str(tmp_path), 'test', batch_size=2, num_frames=2,
                                   crop_size=32, process_index=0, process_count=1)
