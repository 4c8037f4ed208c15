"""Preparation: record contents, bad inputs, resuming, source listing errors, resampling."""

import os
import shutil

import av
import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import prepare
from input_pipeline import records
from input_pipeline import sources
from input_pipeline import synthetic
from input_pipeline import video_decoding

NUM_CLASSES, VIDEOS_PER_CLASS = 10, 3


@pytest.fixture(scope='module')
def synthetic_records(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('synthetic'))
  return out, synthetic.prepare_synthetic(out, num_classes=NUM_CLASSES,
                                          videos_per_class=VIDEOS_PER_CLASS, videos_per_shard=4)


def _count_frames(path):
  with av.open(path) as container:
    return sum(1 for _ in container.decode(video=0))


def _read_records(paths):
  rows = []
  for serialized in tf.data.TFRecordDataset(paths):
    example = tf.train.SequenceExample.FromString(serialized.numpy())
    context = example.context.feature
    rows.append({
        'filename': context[records.FILENAME_KEY].bytes_list.value[0].decode(),
        'label': context[records.LABEL_INDEX_KEY].int64_list.value[0],
        'label_string': context[records.LABEL_STRING_KEY].bytes_list.value[0].decode(),
        'num_frames': context[records.NUM_FRAMES_KEY].int64_list.value[0],
        'jpegs': list(example.feature_lists.feature_list[records.IMAGE_KEY].feature),
        'video_index': context[records.VIDEO_INDEX_KEY].int64_list.value[0],
    })
  return rows


def test_synthetic_records_match_the_source_videos(synthetic_records):
  out, records_dir = synthetic_records
  videos_dir = os.path.join(out, 'videos')
  for split, per_class in (('train', 2), ('test', 1)):
    index = records.read_index(records_dir, split)
    with open(os.path.join(videos_dir, f'{split}.txt')) as f:
      listed = [line.split() for line in f]
    assert index['num_videos'] == NUM_CLASSES * per_class == len(listed)
    assert index['num_classes'] == NUM_CLASSES
    rows = _read_records([shard['path'] for shard in index['shards']])
    assert [s['num_videos'] for s in index['shards']] == [
        len(_read_records([s['path']])) for s in index['shards']]
    assert sorted(row['filename'] for row in rows) == sorted(name for name, _ in listed)
    labels = {name: int(label) for name, label in listed}
    assert sorted(row['video_index'] for row in rows) == list(range(len(listed)))
    for row in rows:
      assert row['label'] == labels[row['filename']]
      assert row['label_string'] == index['class_names'][row['label']]
      assert row['num_frames'] == len(row['jpegs'])
      assert row['num_frames'] == _count_frames(os.path.join(videos_dir, row['filename']))
    assert index['num_frames'] == sum(row['num_frames'] for row in rows)


def test_bad_inputs_are_skipped_and_reported_and_rerun_skips_finished_shards(
    synthetic_records, tmp_path, capsys):
  out, _ = synthetic_records
  videos_dir = os.path.join(out, 'videos')
  folder = tmp_path / 'mixed'
  folder.mkdir()
  good = sorted(os.path.join(videos_dir, line.split()[0])
                for line in open(os.path.join(videos_dir, 'train.txt')))[:3]
  for i, path in enumerate(good):
    shutil.copy(path, folder / f'good_{i}.mp4')
  data = open(good[0], 'rb').read()
  (folder / 'truncated.mp4').write_bytes(data[:len(data) // 2])
  (folder / 'not_a_video.mp4').write_text('this is a text file')
  (folder / 'empty.webm').write_bytes(b'')
  records_dir = str(tmp_path / 'records')
  argv = ['--source=folder', f'--root={folder}', '--splits=unlabelled', f'--out={records_dir}',
          '--num_shards=2', '--workers=1']

  prepare.main(argv)
  index = records.read_index(records_dir, 'unlabelled')
  assert index['num_videos'] == 3
  assert index['num_classes'] == 0
  with open(os.path.join(records_dir, 'unlabelled', records.SKIPPED_FILENAME)) as f:
    skipped = dict(line.rstrip('\n').split('\t') for line in list(f)[1:])
  assert sorted(skipped) == ['empty.webm', 'not_a_video.mp4', 'truncated.mp4']
  assert skipped['empty.webm'] == 'zero-length file'
  assert skipped['truncated.mp4'].startswith('cannot decode')
  assert 'skipped 3 of 6 inputs' in capsys.readouterr().out

  shard_paths = [shard['path'] for shard in index['shards']]
  mtimes = [os.stat(path).st_mtime_ns for path in shard_paths]
  prepare.main(argv)
  assert '2 of 2 shards already finished' in capsys.readouterr().out
  assert [os.stat(path).st_mtime_ns for path in shard_paths] == mtimes
  assert records.read_index(records_dir, 'unlabelled')['num_videos'] == 3

  with pytest.raises(SystemExit, match='different settings'):
    prepare.main(argv + ['--short_side=64'])


def test_resize_and_fps_resampling_in_preparation(synthetic_records, tmp_path):
  out, _ = synthetic_records
  videos_dir = os.path.join(out, 'videos')
  path = os.path.join(videos_dir, open(os.path.join(videos_dir, 'test.txt')).read().split()[0])
  with av.open(path) as container:
    stream = container.streams.video[0]
    source_fps, width, height = float(stream.average_rate), stream.width, stream.height
  source_frames = _count_frames(path)
  video = video_decoding.decode_video_file(
      path, fps=10.0, geometry=video_decoding.FrameGeometry(short_side=48), jpeg_quality=90)
  assert len(video.jpeg_frames) == int(np.ceil(source_frames / source_fps * 10.0 - 1e-6))
  expected = (round(width * 48 / min(width, height)), round(height * 48 / min(width, height)))
  assert (video.width, video.height) == expected
  decoded = tf.io.decode_jpeg(video.jpeg_frames[0]).shape
  assert (decoded[1], decoded[0]) == expected


def test_resample_picks_the_latest_frame_at_each_output_time():
  times = [i / 30 for i in range(30)]  # One second at 30 fps.
  assert list(video_decoding.resample(zip(times, range(30)), 10.0, 1 / 30)) == list(range(0, 30, 3))
  assert list(video_decoding.resample(zip(times, range(30)), None, 1 / 30)) == list(range(30))
  doubled = list(video_decoding.resample(zip(times, range(30)), 60.0, 1 / 30))
  assert doubled == [i // 2 for i in range(60)]


def test_source_listing_errors_name_the_file_and_the_fix(tmp_path):
  with pytest.raises(sources.SourceError, match='classInd.txt'):
    sources.list_source('ucf101', split='train', root=str(tmp_path), splits_dir=str(tmp_path))
  (tmp_path / 'classInd.txt').write_text('1 Archery\n2 Bowling\n')
  (tmp_path / 'trainlist01.txt').write_text('Juggling/v_Juggling_g01_c01.avi 3\n')
  with pytest.raises(sources.SourceError, match=r"Unknown class 'Juggling' in .*trainlist01"):
    sources.list_source('ucf101', split='train', root=str(tmp_path), splits_dir=str(tmp_path))
  with pytest.raises(sources.SourceError, match='testlist01.txt'):
    sources.list_source('ucf101', split='test', root=str(tmp_path), splits_dir=str(tmp_path))
  with pytest.raises(sources.SourceError, match='No videos found'):
    sources.list_source('folder', split='train', root=str(tmp_path))
  with pytest.raises(sources.SourceError, match='_test_split1.txt'):
    sources.list_source('hmdb51', split='train', root=str(tmp_path), splits_dir=str(tmp_path))


def test_kinetics_and_hmdb51_listings(tmp_path):
  (tmp_path / 'k400.csv').write_text(
      'label,youtube_id,time_start,time_end,split\n'
      'abseiling,abc,10,20,train\nzumba,def,0,10,train\nbowling,ghi,5,15,val\n')
  videos = tmp_path / 'videos'
  (videos / 'zumba').mkdir(parents=True)
  (videos / 'zumba' / 'def_000000_000010.webm').write_bytes(b'x')
  listing = sources.list_source('kinetics', split='train', csv_path=str(tmp_path / 'k400.csv'),
                                videos_dir=str(videos))
  assert listing.class_names == ['abseiling', 'bowling', 'zumba']
  assert [(e.name, e.label_index) for e in listing.entries] == [
      ('abc_000010_000020.mp4', 0), ('zumba/def_000000_000010.webm', 2)]
  with pytest.raises(sources.SourceError, match=r"split='test'.*\['train', 'val'\]"):
    sources.list_source('kinetics', split='test', csv_path=str(tmp_path / 'k400.csv'),
                        videos_dir=str(videos))

  splits = tmp_path / 'hmdb_splits'
  splits.mkdir()
  (splits / 'clap_test_split1.txt').write_text('a.avi 1\nb.avi 2\nc.avi 0\n')
  (splits / 'wave_test_split1.txt').write_text('d.avi 2\n')
  listing = sources.list_source('hmdb51', split='test', root=str(tmp_path),
                                splits_dir=str(splits))
  assert listing.class_names == ['clap', 'wave']
  assert [(e.name, e.label_index) for e in listing.entries] == [('clap/b.avi', 0),
                                                                ('wave/d.avi', 1)]


def _reference_extractor(jpegs, count):
  """What the authors' K400 extractor leaves on disk, restated as its file operations: ffmpeg
  writes frame_00001.jpg ...; more than ``count`` files: the sorted ones from position
  ``count`` on are removed; fewer (n): frame_{n-1} (its name formatted from n - 1) is copied
  to frame_n ... frame_{count}."""
  files = {f'frame_{i + 1:05d}.jpg': jpeg for i, jpeg in enumerate(jpegs)}
  names = sorted(files)
  if len(names) > count:
    for name in names[count:]:
      del files[name]
  elif len(names) < count:
    source = files[f'frame_{len(names) - 1:05d}.jpg']
    for i in range(len(names), count + 1):
      files[f'frame_{i:05d}.jpg'] = source
  return [files[name] for name in sorted(files)]


@pytest.mark.parametrize('num_frames', [10, 300, 400])
def test_frames_per_video_follows_the_reference_extractor(num_frames):
  frames = [f'frame {i}' for i in range(num_frames)]
  fitted = prepare.fit_frame_count(frames, 300)
  assert fitted == _reference_extractor(frames, 300)
  assert len(fitted) == 300


def test_prepare_pads_and_trims_to_300_frames(tmp_path):
  from frame_folders import prepare_argv, write_frame_folders
  videos = write_frame_folders(str(tmp_path / 'videos'), [10, 300, 400])
  prepare.main(prepare_argv(str(tmp_path / 'videos'), str(tmp_path / 'records'))
               + ['--frames_per_video=300'])
  index = records.read_index(str(tmp_path / 'records'), 'train')
  rows = _read_records([shard['path'] for shard in index['shards']])
  assert index['num_frames'] == 900
  for row in rows:
    assert row['num_frames'] == 300
    source = videos[row['video_index']]
    assert [frame.bytes_list.value[0] for frame in row['jpegs']] == _reference_extractor(source, 300)
  with pytest.raises(SystemExit, match='--min_frames of at least 2'):
    prepare.main(prepare_argv(str(tmp_path / 'videos'), str(tmp_path / 'other'))
                 + ['--frames_per_video=300', '--min_frames=1'])
