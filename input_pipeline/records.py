"""The prepared-records format: feature names, SequenceExample (de)serialisation, index files.

Layout written by ``input_pipeline.prepare`` (one directory per split)::

  RECORDS/<split>/shard-00000-of-00008.tfrecord   # tf.train.SequenceExample records
  RECORDS/<split>/shard-00000-of-00008.json       # per-shard summary, marks the shard finished
  RECORDS/<split>/index.json                      # the split's index (read_index)
  RECORDS/<split>/skipped.tsv                     # inputs that were skipped, with the reason

Every record is one video, DMVR convention: one JPEG per frame in the feature list
``image/encoded``; the context holds the label and what is needed to trace a record back to
its source.
"""

from __future__ import annotations

import json
import os
from typing import Any

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
INDEX_FILENAME = 'index.json'
SKIPPED_FILENAME = 'skipped.tsv'


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


def parse_video(serialized):
  """Parses one serialised record (a scalar string tensor) into a dict of tensors.

  ``frames`` is the (F,) string tensor of JPEGs, still encoded: readers gather the few frames
  they need before decoding.
  """
  import tensorflow as tf
  context, sequence = tf.io.parse_single_sequence_example(
      serialized,
      context_features={
          LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
          VIDEO_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
      },
      sequence_features={IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
  return {
      'frames': sequence[IMAGE_KEY],
      'label': tf.cast(context[LABEL_INDEX_KEY], tf.int32),
      'video_index': tf.cast(context[VIDEO_INDEX_KEY], tf.int32),
  }


def read_index(records_dir: str, split: str) -> dict[str, Any]:
  """The index of one prepared split.

  Returns the dict written by preparation, with at least ``num_videos``, ``num_classes``,
  ``class_names`` (list, position = label index; empty for unlabelled data), ``num_frames``
  (total over the split) and ``shards``: a list of ``{'path': absolute path, 'num_videos': n,
  'num_frames': total frames, 'num_bytes': file size}`` in shard order. Paths go through
  tf.io.gfile (any filesystem TensorFlow accepts).
  """
  import tensorflow as tf
  path = os.path.join(split_dir(records_dir, split), INDEX_FILENAME)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f'No index for split {split!r}: {path} does not exist. Prepared splits in '
        f'{records_dir}: {prepared_splits(records_dir) or "none"}. Run `python -m '
        f'input_pipeline.prepare` with --out={records_dir} --splits={split} first.')
  index = read_json(path)
  if index['split'] != split:
    raise ValueError(
        f'{path} is the index of split {index["split"]!r}, but split {split!r} was asked for: '
        f'the folder {split_dir(records_dir, split)} holds records of another split (copied or '
        'renamed?). Point the reader at the right folder, or prepare the split again.')
  for shard in index['shards']:
    shard['path'] = os.path.join(split_dir(records_dir, split), shard['path'])
  return index


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
    for serialized in tf.data.TFRecordDataset(shard['path']).as_numpy_iterator():
      example = tf.train.SequenceExample.FromString(serialized)
      if example.context.feature[VIDEO_INDEX_KEY].int64_list.value[0] == video_index:
        return [f.bytes_list.value[0]
                for f in example.feature_lists.feature_list[IMAGE_KEY].feature]
  raise ValueError(f'{split_path} has no video with --video_index={video_index} (it holds '
                   f'{index["num_videos"]} videos, indices 0 to {index["num_videos"] - 1}).')
