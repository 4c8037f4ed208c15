r"""Where every JPEG lies inside the shards, so the training reader reads only the frames it samples.

A K400 record holds 300 JPEGs (about 3.9 MB at 340x256); a VCLR example uses 6 of them. Next
to every shard ``shard-*.tfrecord`` preparation writes ``shard-*.frames.npz`` with, for each
frame of each record in shard order, its byte offset in the shard file and its length, and
the number of frames of each record. The training reader then reads 6 byte ranges (about
80 KB) per example instead of the whole record; the records themselves stay ordinary DMVR
SequenceExamples, read whole by the evaluation readers.

Records prepared before this index existed get it without rewriting them:

  python -m input_pipeline.frame_index --records=/data/k400_records --splits=train

The offsets come from the serialised record itself: a protobuf stores a bytes field
verbatim, so each JPEG is found in the record's bytes, in order, after the previous one.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import threading
from typing import Sequence

import numpy as np

SUFFIX = '.frames.npz'
# TFRecord framing: uint64 length, uint32 CRC of the length, data, uint32 CRC of the data.
RECORD_HEADER_BYTES = 12
RECORD_FOOTER_BYTES = 4


def index_path(shard_path: str) -> str:
  return shard_path[:-len('.tfrecord')] + SUFFIX


def jpeg_positions(serialized: bytes, jpegs: Sequence[bytes]) -> np.ndarray:
  """(F,) offsets of each JPEG inside one serialised record, in frame order."""
  positions, start = [], 0
  for jpeg in jpegs:
    position = serialized.find(jpeg, start)
    if position < 0:
      raise ValueError('a frame of the record was not found in its serialised bytes')
    positions.append(position)
    start = position + len(jpeg)
  return np.asarray(positions, np.int64)


class ShardIndexBuilder:
  """Collects the frame positions of the records written to one shard, in order."""

  def __init__(self):
    self._file_offset = 0
    self._offsets, self._lengths, self._counts = [], [], []

  def add(self, serialized: bytes, jpegs: Sequence[bytes]) -> None:
    data_start = self._file_offset + RECORD_HEADER_BYTES
    self._offsets.append(data_start + jpeg_positions(serialized, jpegs))
    self._lengths.append(np.asarray([len(j) for j in jpegs], np.int32))
    self._counts.append(len(jpegs))
    self._file_offset = data_start + len(serialized) + RECORD_FOOTER_BYTES

  def save(self, path: str) -> None:
    import tensorflow as tf
    empty = np.zeros((0,), np.int64)
    buffer = io.BytesIO()  # zip needs a seekable file; gfile writers are not
    np.savez(buffer, offsets=np.concatenate(self._offsets) if self._offsets else empty,
             lengths=np.concatenate(self._lengths) if self._lengths else empty.astype(np.int32),
             frames_per_record=np.asarray(self._counts, np.int64))
    tmp_path = path + '.tmp.npz'
    with tf.io.gfile.GFile(tmp_path, 'wb') as f:
      f.write(buffer.getvalue())
    tf.io.gfile.rename(tmp_path, path, overwrite=True)


def iterate_records(shard_path: str):
  """Serialised records of a TFRecord file, read with the plain framing (no CRC check)."""
  import tensorflow as tf
  with tf.io.gfile.GFile(shard_path, 'rb') as f:
    while True:
      header = f.read(RECORD_HEADER_BYTES)
      if not header:
        return
      if len(header) < RECORD_HEADER_BYTES:
        raise ValueError(f'{shard_path}: truncated record header')
      (length,) = struct.unpack('<Q', header[:8])
      data = f.read(length)
      f.read(RECORD_FOOTER_BYTES)
      if len(data) < length:
        raise ValueError(f'{shard_path}: truncated record')
      yield data


def build_shard_index(shard_path: str) -> None:
  """Writes ``shard-*.frames.npz`` for an existing shard by reading it once."""
  import tensorflow as tf
  from input_pipeline import records
  builder = ShardIndexBuilder()
  for serialized in iterate_records(shard_path):
    example = tf.train.SequenceExample.FromString(serialized)
    jpegs = example.feature_lists.feature_list[records.IMAGE_KEY].feature
    builder.add(serialized, [frame.bytes_list.value[0] for frame in jpegs])
  builder.save(index_path(shard_path))


class HostFrames:
  """The frame index of one host's shards, and reads of single frames from them.

  Videos are numbered 0..V-1 in the host's shard order and record order (the order the
  stream's shard numbers and record positions describe).
  """

  def __init__(self, shard_paths: Sequence[str]):
    import tensorflow as tf
    offsets, lengths, counts, shard_of_video = [], [], [], []
    for shard_number, path in enumerate(shard_paths):
      index_file = index_path(path)
      if not tf.io.gfile.exists(index_file):
        raise FileNotFoundError(
            f'{index_file} is missing: the training reader reads single frames through it. '
            f'Create it with `python -m input_pipeline.frame_index --records=DIR` (records '
            'prepared before the frame index existed), or prepare the records again.')
      with tf.io.gfile.GFile(index_file, 'rb') as f:
        index = np.load(io.BytesIO(f.read()))
        offsets.append(index['offsets'])
        lengths.append(index['lengths'])
        counts.append(index['frames_per_record'])
      shard_of_video.append(np.full(len(counts[-1]), shard_number, np.int32))
    self.paths = list(shard_paths)
    self.offsets = np.concatenate(offsets)
    self.lengths = np.concatenate(lengths).astype(np.int64)
    self.frames_per_video = np.concatenate(counts)
    self.first_frame = np.concatenate([[0], np.cumsum(self.frames_per_video)[:-1]]).astype(np.int64)
    self.shard_of_video = np.concatenate(shard_of_video)
    self.videos_per_shard = np.asarray([len(c) for c in counts], np.int64)
    self._local = threading.local()  # one open file per (thread, shard)

  def _file(self, shard: int):
    files = self._local.__dict__.setdefault('files', {})
    if shard not in files:
      import tensorflow as tf
      path = self.paths[shard]
      # Local files: os.pread, thread-safe and without the GIL; others (gs://...) via gfile.
      files[shard] = (os.open(path, os.O_RDONLY) if '://' not in path
                      else tf.io.gfile.GFile(path, 'rb'))
    return files[shard]

  def read(self, video: int, frames: np.ndarray) -> list[bytes]:
    """The JPEG bytes of ``frames`` (indices within the video) of host video ``video``."""
    rows = self.first_frame[video] + frames
    handle = self._file(int(self.shard_of_video[video]))
    out = []
    for offset, length in zip(self.offsets[rows], self.lengths[rows]):
      if isinstance(handle, int):
        out.append(os.pread(handle, int(length), int(offset)))
      else:
        handle.seek(int(offset))
        out.append(handle.read(int(length)))
    return out

  def bytes_of(self, video: int, frames: np.ndarray) -> int:
    return int(self.lengths[self.first_frame[video] + frames].sum())


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--records', required=True, help='prepared records directory')
  parser.add_argument('--splits', default='train', help='comma-separated splits')
  args = parser.parse_args(argv)
  from input_pipeline import records
  for split in args.splits.split(','):
    shards = records.read_index(args.records, split)['shards']
    for number, shard in enumerate(shards):
      build_shard_index(shard['path'])
      print(f'{split}: frame index of shard {number + 1}/{len(shards)} written '
            f'({index_path(shard["path"])})', flush=True)


if __name__ == '__main__':
  main()
