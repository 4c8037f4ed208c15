"""Listing the videos of one split for every kind of source people arrive with.

Every lister returns a ``Listing``: the class names (position = label index, consistent over
all splits of the source) and the split's videos. Nothing is decoded here; unreadable files are
found and reported later by preparation. Paths go through tf.io.gfile (gs://... works). Problems with the listing itself (missing split
files, unknown classes, nothing found) raise ``SourceError`` naming the file and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import tensorflow as tf

from input_pipeline import records

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.avi', '.mkv', '.mov', '.m4v', '.mpg', '.mpeg')
SOURCE_KINDS = ('kinetics', 'ucf101', 'hmdb51', 'frames', 'folder', 'list')


class SourceError(ValueError):
  """The source cannot be listed: the message names the file and what to do."""


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  path: str  # A video file, or a folder of JPEG frames for the 'frames' kind.
  name: str  # Path relative to the source root: stored in the record, used in reports.
  label_index: int  # records.UNLABELLED for unlabelled data.
  label_string: str
  is_frame_folder: bool = False


@dataclasses.dataclass(frozen=True)
class Listing:
  class_names: list[str]
  entries: list[VideoEntry]


def _require_file(path: str, what: str, hint: str) -> None:
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise SourceError(f'{what} not found: {path}. {hint}')


def _require_dir(path: str, flag: str) -> None:
  if not path or not tf.io.gfile.isdir(path):
    raise SourceError(f'{flag}={path!r} is not a directory. Pass the folder that holds the data.')


def _labelled(path: str, name: str, class_names: list[str], class_name: str,
              where: str) -> VideoEntry:
  if class_name not in class_names:
    raise SourceError(
        f'Unknown class {class_name!r} in {where} (known: {len(class_names)} classes, e.g. '
        f'{class_names[:3]}). Check that the list belongs to this dataset and split.')
  return VideoEntry(path, name, class_names.index(class_name), class_name)


def list_kinetics(csv_path: str, videos_dir: str, split: str) -> Listing:
  """Kinetics annotation CSV (label,youtube_id,time_start,time_end,split) plus a video folder.

  Videos are looked up as ``<youtube_id>_<start:06d>_<end:06d>.<any extension>`` directly in
  ``videos_dir`` or in ``videos_dir/<label>/``. Classes are all labels of the CSV (all splits),
  sorted, so indices agree between splits. Rows whose file is missing are listed with a path
  that does not exist and end up in the skipped report (Kinetics downloads always miss some).
  """
  _require_file(csv_path, 'Kinetics annotation CSV', 'Pass --csv=<split>.csv from the dataset.')
  _require_dir(videos_dir, '--videos_dir')
  with tf.io.gfile.GFile(csv_path) as f:
    rows = list(csv.DictReader(f))
  missing = {'label', 'youtube_id', 'time_start', 'time_end'} - set(rows[0] if rows else {})
  if not rows or missing:
    raise SourceError(f'{csv_path} is empty or lacks the columns {sorted(missing)}; expected '
                      'the Kinetics header label,youtube_id,time_start,time_end,split.')
  class_names = sorted({row['label'] for row in rows})
  if 'split' in rows[0]:
    split_rows = [row for row in rows if row['split'] == split]
    if not split_rows:
      splits = sorted({row['split'] for row in rows})
      raise SourceError(f'No rows with split={split!r} in {csv_path}; it has {splits}. '
                        'Pass them in --splits.')
  else:
    split_rows = rows
  files_by_stem = {}
  for path in tf.io.gfile.glob(os.path.join(videos_dir, '*')) + tf.io.gfile.glob(
      os.path.join(videos_dir, '*', '*')):
    if path.lower().endswith(VIDEO_EXTENSIONS):
      files_by_stem[os.path.splitext(os.path.basename(path))[0]] = path
  entries = []
  for row in split_rows:
    stem = (f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_"
            f"{int(float(row['time_end'])):06d}")
    path = files_by_stem.get(stem, os.path.join(videos_dir, stem + '.mp4'))
    entries.append(_labelled(path, os.path.relpath(path, videos_dir), class_names, row['label'],
                             csv_path))
  return Listing(class_names, entries)


def list_ucf101(root: str, splits_dir: str, split: str, split_number: int) -> Listing:
  """UCF101: classInd.txt (1-based ``index Class``), trainlist0N.txt, testlist0N.txt."""
  _require_dir(root, '--root')
  _require_dir(splits_dir, '--splits_dir')
  class_ind = os.path.join(splits_dir, 'classInd.txt')
  _require_file(class_ind, 'UCF101 class list', 'Pass --splits_dir=<ucfTrainTestlist folder>.')
  with tf.io.gfile.GFile(class_ind) as f:
    class_names = [line.split()[1] for line in f if line.strip()]
  if split not in ('train', 'test'):
    raise SourceError(f'UCF101 has splits train and test, not {split!r}: pass --splits=train,test.')
  list_path = os.path.join(splits_dir, f'{split}list{split_number:02d}.txt')
  _require_file(list_path, 'UCF101 split list', 'Check --splits_dir and --split_number (1-3).')
  entries = []
  with tf.io.gfile.GFile(list_path) as f:
    for line in f:
      if not line.strip():
        continue
      name = line.split()[0]  # testlist lines carry no label: the class is the folder.
      entries.append(_labelled(os.path.join(root, name), name, class_names, name.split('/')[0],
                               list_path))
  return Listing(class_names, entries)


def list_hmdb51(root: str, splits_dir: str, split: str, split_number: int) -> Listing:
  """HMDB51: per-class ``<class>_test_split<N>.txt`` with ``name.avi 1|2|0`` (train|test|unused)."""
  _require_dir(root, '--root')
  _require_dir(splits_dir, '--splits_dir')
  suffix = f'_test_split{split_number}.txt'
  split_files = sorted(tf.io.gfile.glob(os.path.join(splits_dir, '*' + suffix)))
  if not split_files:
    raise SourceError(f'No HMDB51 split files *{suffix} in {splits_dir}. Pass --splits_dir='
                      '<testTrainMulti_7030_splits folder> and a --split_number of 1-3.')
  codes = {'train': '1', 'test': '2'}
  if split not in codes:
    raise SourceError(f'HMDB51 has splits train and test, not {split!r}: pass --splits=train,test.')
  class_names = [os.path.basename(path)[:-len(suffix)] for path in split_files]
  entries = []
  for label_index, (class_name, split_file) in enumerate(zip(class_names, split_files)):
    with tf.io.gfile.GFile(split_file) as f:
      for line in f:
        parts = line.split()
        if len(parts) == 2 and parts[1] == codes[split]:
          name = f'{class_name}/{parts[0]}'
          entries.append(VideoEntry(os.path.join(root, name), name, label_index, class_name))
  return Listing(class_names, entries)


def list_frame_folders(root: str, split: str) -> Listing:
  """The reference's extracted frames: ``<root>/<split>.txt`` with ``relative/path nframes label``.

  The relative path is resolved against ``root`` and then ``root/<split>``; the class name is
  the path's parent folder (``<class>/<video>``).
  """
  _require_dir(root, '--root')
  list_path = os.path.join(root, f'{split}.txt')
  _require_file(list_path, 'Frame list', f'Expected {split}.txt beside the frame folders '
                '(lines "relative/path nframes label").')
  rows = []
  with tf.io.gfile.GFile(list_path) as f:
    for line in f:
      parts = line.split()
      if len(parts) < 3:
        if parts:
          raise SourceError(f'{list_path}: line {line.strip()!r} is not "path nframes label".')
        continue
      rows.append((parts[0], int(parts[-1])))
  names_by_label = {}
  for relative, label in rows:
    names_by_label.setdefault(label, relative.rstrip('/').split('/')[-2]
                              if '/' in relative.strip('/') else str(label))
  class_names = [names_by_label.get(i, str(i)) for i in range(max(names_by_label) + 1)]
  entries = []
  for relative, label in rows:
    path = os.path.join(root, relative)
    if not tf.io.gfile.isdir(path):
      path = os.path.join(root, split, relative)
    entries.append(VideoEntry(path, relative, label, class_names[label], is_frame_folder=True))
  return Listing(class_names, entries)


def list_folder(root: str) -> Listing:
  """A folder (searched recursively) of unlabelled videos."""
  _require_dir(root, '--root')
  entries = []
  for dirpath, _, filenames in sorted(tf.io.gfile.walk(root)):
    for filename in sorted(filenames):
      if filename.lower().endswith(VIDEO_EXTENSIONS):
        path = os.path.join(dirpath, filename)
        entries.append(VideoEntry(path, os.path.relpath(path, root), records.UNLABELLED, ''))
  return Listing([], entries)


def list_class_list(root: str, split: str) -> Listing:
  """Folder-per-class videos with ``classes.txt`` (one name a line) and ``<split>.txt`` lists of
  ``Class/video.mp4 label`` lines. The synthetic dataset is written in this layout."""
  _require_dir(root, '--root')
  classes_path = os.path.join(root, 'classes.txt')
  _require_file(classes_path, 'Class list', 'Expected classes.txt with one class name a line.')
  with tf.io.gfile.GFile(classes_path) as f:
    class_names = [line.strip() for line in f if line.strip()]
  list_path = os.path.join(root, f'{split}.txt')
  _require_file(list_path, 'Split list', f'Expected {split}.txt with "Class/video.mp4 label" '
                'lines; check --splits.')
  entries = []
  with tf.io.gfile.GFile(list_path) as f:
    for line in f:
      if line.strip():
        name = line.split()[0]
        entries.append(_labelled(os.path.join(root, name), name, class_names, name.split('/')[0],
                                 list_path))
  return Listing(class_names, entries)


def list_source(kind: str, *, split: str, root: str = '', csv_path: str = '',
                videos_dir: str = '', splits_dir: str = '', split_number: int = 1) -> Listing:
  """Dispatches on the source kind (one of SOURCE_KINDS) and checks that something was found."""
  if kind == 'kinetics':
    listing = list_kinetics(csv_path, videos_dir, split)
  elif kind == 'ucf101':
    listing = list_ucf101(root, splits_dir, split, split_number)
  elif kind == 'hmdb51':
    listing = list_hmdb51(root, splits_dir, split, split_number)
  elif kind == 'frames':
    listing = list_frame_folders(root, split)
  elif kind == 'folder':
    listing = list_folder(root)
  elif kind == 'list':
    listing = list_class_list(root, split)
  else:
    raise SourceError(f'Unknown --source={kind!r}; use one of {", ".join(SOURCE_KINDS)}.')
  if not listing.entries:
    raise SourceError(f'No videos found for --source={kind} split {split!r} (root={root!r}, '
                      f'csv={csv_path!r}, videos_dir={videos_dir!r}). Check the paths and split.')
  return listing
