"""The prepared-records format: feature names, SequenceExample (de)serialisation, index files.

Layout written by ``input_pipeline.prepare`` (one directory per split)::

  RECORDS/<split>/shard-00000-of-00008.tfrecord   # tf.train.SequenceExample records
  RECORDS/<split>/shard-00000-of-00008.json       # per-shard summary, marks the shard finished
  RECORDS/<split>/index.json                      # the split's index (read_index)
  RECORDS/<split>/skipped.tsv                     # inputs that were skipped, with the reason

Every record is one video, DMVR convention: one JPEG per frame in the feature list
``image/encoded``; the context holds the label and what is needed to trace a record back to
its source.

A dataset built by ``python -m input_pipeline.vclr_videos`` (TFDS) holds the same examples as
tf.train.Examples; its version folder ``DATA_DIR/vclr_videos/<config>/<version>`` serves as a
records folder (read_index), so every reader takes it as ``records_dir``, or finds it from the
dataset's name with ``config.data.source='tfds'`` (source_dir).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from input_pipeline import split_index  # no TensorFlow
from vclr_jax import cli_errors  # no TensorFlow, no JAX

IMAGE_KEY = 'image/encoded'
LABEL_INDEX_KEY = 'clip/label/index'
LABEL_STRING_KEY = 'clip/label/string'
FILENAME_KEY = 'video/filename'
VIDEO_INDEX_KEY = 'video/index'
NUM_FRAMES_KEY = 'video/num_frames'
FPS_KEY = 'video/fps'
HEIGHT_KEY = 'video/height'
WIDTH_KEY = 'video/width'

UNLABELLED = -1
INDEX_FILENAME = split_index.INDEX_FILENAME
SKIPPED_FILENAME = 'skipped.tsv'

# How the records of a split are serialised: read_index's 'record_format'.
SEQUENCE_EXAMPLE = 'sequence_example'  # python -m input_pipeline.prepare
TFDS_EXAMPLE = 'tfds_example'  # python -m input_pipeline.vclr_videos (TFDS)
# The TFDS dataset: its name, the file TFDS writes into every built version folder, and the
# feature that holds each record field: serialize_video's argument of the same value.
TFDS_NAME = 'vclr_videos'
# Its configs and current version. The builder (input_pipeline/vclr_videos/) defines one config
# of each name and takes its version from here: the builder uses this module, never the reverse.
TFDS_CONFIGS = ('kinetics400', 'ucf101_split1', 'hmdb51_split1', 'folder')
TFDS_VERSION = '1.0.0'
TFDS_INFO_FILENAME = split_index.TFDS_INFO_FILENAME
# config.data.tfds_name: TFDS's 'name/config[:version]' (a version is x.y.z, no wildcards).
TFDS_NAME_PATTERN = re.compile(rf'{TFDS_NAME}/(?P<config>\w+)(:(?P<version>\d+\.\d+\.\d+))?')
TFDS_FEATURES = {IMAGE_KEY: 'jpeg_frames', LABEL_INDEX_KEY: 'label_index',
                 LABEL_STRING_KEY: 'label_string', FILENAME_KEY: 'filename',
                 VIDEO_INDEX_KEY: 'video_index', FPS_KEY: 'fps', HEIGHT_KEY: 'height',
                 WIDTH_KEY: 'width'}


def shard_filename(shard: int, num_shards: int) -> str:
  return f'shard-{shard:05d}-of-{num_shards:05d}.tfrecord'


def split_dir(records_dir: str, split: str) -> str:
  return os.path.join(records_dir, split)


def serialize_video(*, jpeg_frames: list[bytes], label_index: int, label_string: str,
                    filename: str, video_index: int, fps: float, height: int,
                    width: int) -> bytes:
  """One video as a serialised tf.train.SequenceExample."""
  import tensorflow as tf  # Only preparation workers and readers pay for the import.

  def int_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

  def bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  context = tf.train.Features(feature={
      LABEL_INDEX_KEY: int_feature(label_index),
      LABEL_STRING_KEY: bytes_feature(label_string.encode()),
      FILENAME_KEY: bytes_feature(filename.encode()),
      VIDEO_INDEX_KEY: int_feature(video_index),
      NUM_FRAMES_KEY: int_feature(len(jpeg_frames)),
      FPS_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=[fps])),
      HEIGHT_KEY: int_feature(height),
      WIDTH_KEY: int_feature(width),
  })
  frames = tf.train.FeatureList(feature=[bytes_feature(jpeg) for jpeg in jpeg_frames])
  example = tf.train.SequenceExample(
      context=context, feature_lists=tf.train.FeatureLists(feature_list={IMAGE_KEY: frames}))
  return example.SerializeToString()


def parse_video(serialized, record_format: str = SEQUENCE_EXAMPLE):
  """Parses one serialised record (a scalar string tensor) into a dict of tensors.

  ``frames`` is the (F,) string tensor of JPEGs, still encoded: readers gather the few frames
  they need before decoding. ``record_format`` is the split's (read_index): both formats give
  the same dict.
  """
  import tensorflow as tf
  context_features = {
      LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
      VIDEO_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
      FILENAME_KEY: tf.io.FixedLenFeature([], tf.string),
      FPS_KEY: tf.io.FixedLenFeature([], tf.float32),
  }
  if record_format == SEQUENCE_EXAMPLE:
    context, sequence = tf.io.parse_single_sequence_example(
        serialized, context_features=context_features,
        sequence_features={IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
    fields = dict(context, **sequence)
  elif record_format == TFDS_EXAMPLE:
    features = {TFDS_FEATURES[key]: spec for key, spec in context_features.items()}
    features[TFDS_FEATURES[IMAGE_KEY]] = tf.io.FixedLenSequenceFeature(
        [], tf.string, allow_missing=True)
    parsed = tf.io.parse_single_example(serialized, features)
    fields = {key: parsed[name] for key, name in TFDS_FEATURES.items() if name in parsed}
  else:
    raise ValueError(f'Unknown record format {record_format!r}: expected {SEQUENCE_EXAMPLE!r} '
                     f'or {TFDS_EXAMPLE!r}.')
  return {
      'frames': fields[IMAGE_KEY],
      'label': tf.cast(fields[LABEL_INDEX_KEY], tf.int32),
      'video_index': tf.cast(fields[VIDEO_INDEX_KEY], tf.int32),
      'filename': fields[FILENAME_KEY],
      'fps': fields[FPS_KEY],
  }


def read_index(records_dir: str, split: str) -> dict[str, Any]:
  """The index of one prepared split.

  Returns the dict written by preparation, with at least ``num_videos``, ``num_classes``,
  ``class_names`` (list, position = label index; empty for unlabelled data), ``num_frames``
  (total over the split), ``record_format`` (SEQUENCE_EXAMPLE) and ``shards``: a list of
  ``{'path': absolute path, 'num_videos': n, 'num_frames': total frames, 'num_bytes': file
  size}`` in shard order. For a built TFDS dataset (``records_dir`` is its version folder) see
  tfds_index. Paths go through tf.io.gfile (any filesystem TensorFlow accepts).
  """
  import tensorflow as tf
  if tf.io.gfile.exists(os.path.join(records_dir, TFDS_INFO_FILENAME)):
    return tfds_index(records_dir, split)
  path = os.path.join(split_dir(records_dir, split), INDEX_FILENAME)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(_tfds_advice(records_dir) or (
        f'No index for split {split!r}: {path} does not exist. Prepared splits in '
        f'{records_dir}: {prepared_splits(records_dir) or "none"}. Run `python -m '
        f'input_pipeline.prepare` with --out={records_dir} --splits={split} first.'))
  index = read_json(path)
  if index['split'] != split:
    raise split_index.SplitMismatchError(
        split_index.split_mismatch_message(path, index['split'], split))
  for shard in index['shards']:
    shard['path'] = os.path.join(split_dir(records_dir, split), shard['path'])
  index['record_format'] = SEQUENCE_EXAMPLE
  return index


def tfds_index(dataset_dir: str, split: str) -> dict[str, Any]:
  """The index of one split of a dataset built by ``python -m input_pipeline.vclr_videos``.

  From the dataset's own metadata: ``split``, ``num_videos``, ``num_classes``, ``class_names``,
  ``record_format`` (TFDS_EXAMPLE) and ``shards`` (``{'path', 'num_videos'}``, the tfrecord
  files TFDS wrote, in its order; each has its frame index beside it, written by the builder).
  The readers read these files themselves, like prepared shards, rather than through TFDS's
  ``as_dataset``: the per-host stream (record_stream.py) needs every host's own shards, an
  order per epoch fixed by the seed, a resume that skips whole shard groups by their sizes,
  the (shard, record) position of a damaged record, and the frame index's byte ranges, none
  of which ``as_dataset`` offers.
  """
  import tensorflow_datasets as tfds  # only for datasets built with it
  info = tfds.builder_from_directory(dataset_dir).info
  if info.file_format != tfds.core.FileFormat.TFRECORD:
    raise ValueError(f'{dataset_dir} holds {info.file_format.value} files; the readers read '
                     'tfrecord files: build it again with the default file format.')
  if split not in info.splits:
    raise FileNotFoundError(f'The TFDS dataset {dataset_dir} has no split {split!r}; it has '
                            f'{sorted(info.splits.keys())}.')
  split_info = info.splits[split]
  class_names = list(info.features[TFDS_FEATURES[LABEL_INDEX_KEY]].names)
  return {
      'split': split,
      'num_videos': split_info.num_examples,
      'num_classes': len(class_names),
      'class_names': class_names,
      'record_format': TFDS_EXAMPLE,
      'shards': [{'path': os.fspath(path), 'num_videos': count}
                 for path, count in zip(split_info.filepaths, split_info.shard_lengths)],
  }


def source_dir(data) -> str:
  """The folder the readers read for a config's data block (config.data): ``records_dir`` for
  ``source='records'``, the built dataset's version folder (tfds_version_dir) for 'tfds'."""
  if data.source == 'records':
    return data.records_dir
  if data.source == 'tfds':
    return tfds_version_dir(data.tfds_name, data.tfds_data_dir)
  raise cli_errors.UserError(
      f"config.data.source={data.source!r}: the readers read 'records' (prepared records in "
      "config.data.records_dir) or 'tfds' (the dataset config.data.tfds_name): pick one.")


def tfds_version_dir(tfds_name: str, data_dir: str) -> str:
  """The version folder of the built dataset ``tfds_name`` ('vclr_videos/<config>[:<version>]';
  no version: the builder's current one, as tfds.load) under TFDS's ``data_dir`` ('': TFDS's
  default, $TFDS_DATA_DIR or ~/tensorflow_datasets).

  Raises UserError for a name that is not one of vclr_videos' configs and FileNotFoundError,
  with the command that builds it, for a dataset that is not built; both name the config key.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds
  match = TFDS_NAME_PATTERN.fullmatch(tfds_name)
  if not match or match['config'] not in TFDS_CONFIGS:
    raise cli_errors.UserError(
        f"config.data.tfds_name={tfds_name!r} is not a config of the TFDS dataset {TFDS_NAME}: "
        f"with config.data.source='tfds', give {TFDS_NAME}/<config>[:<version>], <config> one "
        f'of {", ".join(TFDS_CONFIGS)}.')
  data_dir = data_dir or tfds.core.constants.DATA_DIR
  config_dir = os.path.join(data_dir, TFDS_NAME, match['config'])
  version_dir = os.path.join(config_dir, match['version'] or TFDS_VERSION)
  if not tf.io.gfile.exists(os.path.join(version_dir, TFDS_INFO_FILENAME)):
    built = sorted(os.path.basename(os.path.dirname(path)) for path in
                   tf.io.gfile.glob(os.path.join(config_dir, '*', TFDS_INFO_FILENAME)))
    other_versions = (f' Built there: version {", ".join(built)} (add :<version> to '
                      'config.data.tfds_name to read one).' if built else '')
    raise FileNotFoundError(
        f'config.data.tfds_name={tfds_name} is not built in config.data.tfds_data_dir='
        f'{data_dir} (no {version_dir}/{TFDS_INFO_FILENAME}).{other_versions} Build it with '
        f'`{_build_command(match["config"], data_dir)}` (docs/data.md, TFDS).')
  return version_dir


def _build_command(config: str, data_dir: str) -> str:
  return (f'python -m input_pipeline.{TFDS_NAME} --config={config} --manual_dir=MANUAL_DIR '
          f'--data_dir={data_dir}')


def _tfds_advice(records_dir: str) -> str:
  """What to do when ``records_dir`` was meant to be a built TFDS dataset ('' if it was not)."""
  import tensorflow as tf
  built = sorted(os.path.dirname(path) for path in
                 tf.io.gfile.glob(os.path.join(records_dir, '*', TFDS_INFO_FILENAME)))
  if built:
    return (f'{records_dir} holds the built TFDS dataset {", ".join(built)}: pass that version '
            'folder as the records folder.')
  parts = records_dir.rstrip('/').split('/')
  if TFDS_NAME not in parts:
    return ''
  data_dir = '/'.join(parts[:parts.index(TFDS_NAME)]) or '.'
  config = (parts[parts.index(TFDS_NAME) + 1:] or ['CONFIG'])[0]
  return (f'{records_dir} is not a built TFDS dataset (no {TFDS_INFO_FILENAME}). Build it with '
          f'`{_build_command(config, data_dir)}` (docs/data.md, TFDS) and pass the version '
          f'folder it prints, {data_dir}/{TFDS_NAME}/{config}/<version>.')


def prepared_splits(records_dir: str) -> list[str]:
  """The splits of ``records_dir`` that have an index, sorted."""
  import tensorflow as tf
  if not tf.io.gfile.isdir(records_dir):
    return []
  return sorted(name.rstrip('/') for name in tf.io.gfile.listdir(records_dir)
                if tf.io.gfile.exists(os.path.join(records_dir, name.rstrip('/'),
                                                   INDEX_FILENAME)))


def read_json(path: str) -> Any:
  import tensorflow as tf
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def write_json_atomically(path: str, payload: Any) -> None:
  """Writes JSON through a temporary file so that a killed run never leaves half a file."""
  import tensorflow as tf
  tmp_path = path + '.tmp'
  with tf.io.gfile.GFile(tmp_path, 'w') as f:
    json.dump(payload, f, indent=1)
  tf.io.gfile.rename(tmp_path, path, overwrite=True)


def video_jpegs(split_path: str, video_index: int) -> list[bytes]:
  """The JPEG frames of the video numbered ``video_index`` in a prepared split folder."""
  import tensorflow as tf  # as in serialize_video: only callers that read records pay for it
  split_path = os.path.normpath(split_path)
  index = read_index(os.path.dirname(split_path), os.path.basename(split_path))
  for shard in index['shards']:
    videos = tf.data.TFRecordDataset(shard['path']).map(
        lambda serialized: parse_video(serialized, index['record_format']))
    for video in videos.as_numpy_iterator():
      if video['video_index'] == video_index:
        return list(video['frames'])
  raise ValueError(f'{split_path} has no video with --video_index={video_index} (it holds '
                   f'{index["num_videos"]} videos, indices 0 to {index["num_videos"] - 1}).')
