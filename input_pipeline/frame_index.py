r"""Where every JPEG lies inside the shards, so the training reader reads only the frames it samples.

A K400 record holds 300 JPEGs (about 3.9 MB at 340x256); a VCLR example uses 6 of them. Next
to every shard ``shard-*.tfrecord`` preparation writes ``shard-*.frames.npz`` with, for each
frame of each record in shard order, its byte offset in the shard file, its length and its
CRC-32 (the reader skips a frame whose bytes changed: input_pipeline/damage.py), and the
number of frames of each record. The training reader then reads 6 byte ranges (about
80 KB) per example instead of the whole record; the records themselves stay ordinary DMVR
SequenceExamples, read whole by the evaluation readers. The TFDS builder
(input_pipeline/vclr_videos) writes the same index beside every tfrecord file it writes.

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
import sys
import threading
import zlib
from typing import Sequence

import numpy as np

from input_pipeline import records
from input_pipeline import split_index

SUFFIX = split_index.FRAME_INDEX_SUFFIX
# TFRecord framing: uint64 length, uint32 CRC of the length, data, uint32 CRC of the data.
RECORD_HEADER_BYTES = 12
RECORD_FOOTER_BYTES = 4


index_path = split_index.frame_index_path


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
    self._offsets, self._lengths, self._crcs, self._counts = [], [], [], []

  def add(self, serialized: bytes, jpegs: Sequence[bytes]) -> None:
    data_start = self._file_offset + RECORD_HEADER_BYTES
    self._offsets.append(data_start + jpeg_positions(serialized, jpegs))
    self._lengths.append(np.asarray([len(j) for j in jpegs], np.int32))
    self._crcs.append(np.asarray([zlib.crc32(j) for j in jpegs], np.uint32))
    self._counts.append(len(jpegs))
    self._file_offset = data_start + len(serialized) + RECORD_FOOTER_BYTES

  @property
  def num_bytes(self) -> int:
    """Size of the shard file holding the records added so far."""
    return self._file_offset

  def arrays(self) -> dict[str, np.ndarray]:
    """The index as saved in ``shard-*.frames.npz``."""

    def joined(parts, dtype):
      return np.concatenate(parts).astype(dtype) if parts else np.zeros((0,), dtype)

    return {'offsets': joined(self._offsets, np.int64), 'lengths': joined(self._lengths, np.int32),
            'crc32': joined(self._crcs, np.uint32),
            'frames_per_record': np.asarray(self._counts, np.int64)}

  def save(self, path: str) -> None:
    import tensorflow as tf
    buffer = io.BytesIO()  # zip needs a seekable file; gfile writers are not
    np.savez(buffer, **self.arrays())
    tmp_path = path + '.tmp.npz'
    with tf.io.gfile.GFile(tmp_path, 'wb') as f:
      f.write(buffer.getvalue())
    tf.io.gfile.rename(tmp_path, path, overwrite=True)


def count_records(shard_path: str) -> int:
  """Records whose TFRecord framing fits in the file, found by reading only the length headers.

  Cheap (one small read per record); a truncated file or garbled length ends the count early.
  CRCs are not checked here: ``python -m input_pipeline.verify`` does that.
  """
  import tensorflow as tf
  size = tf.io.gfile.stat(shard_path).length
  count = offset = 0
  with tf.io.gfile.GFile(shard_path, 'rb') as f:
    while offset + RECORD_HEADER_BYTES <= size:
      f.seek(offset)
      (length,) = struct.unpack('<Q', f.read(8))
      offset += RECORD_HEADER_BYTES + length + RECORD_FOOTER_BYTES
      if offset > size:
        break
      count += 1
  return count


def shard_mismatch(shard_path: str, expected: dict) -> str | None:
  """Why a shard file differs from what preparation recorded (``expected``: its summary or
  index.json entry, with ``num_bytes`` and ``num_videos``), or None if size and record count
  match."""
  import tensorflow as tf
  if 'num_bytes' not in expected:
    return 'prepared by an older version: no recorded size, no frame checksums'
  if not tf.io.gfile.exists(shard_path):
    return 'the file is missing'
  size = tf.io.gfile.stat(shard_path).length
  if size != expected['num_bytes']:
    return f'{size} bytes, its summary says {expected["num_bytes"]}'
  count = count_records(shard_path)
  if count != expected['num_videos']:
    return f'{count} readable records, its summary says {expected["num_videos"]}'
  return None


def index_of_shard(shard_path: str, record_format: str = records.SEQUENCE_EXAMPLE
                   ) -> ShardIndexBuilder:
  """The frame index of an existing shard, by reading it once (CRCs checked: a damaged shard
  raises ValueError naming the file instead of getting an index of its damage).
  ``record_format``: the split's (records.read_index)."""
  import tensorflow as tf
  builder = ShardIndexBuilder()
  try:
    for serialized in tf.data.TFRecordDataset(shard_path).as_numpy_iterator():
      jpegs = records.parse_video(serialized, record_format)['frames'].numpy()
      builder.add(serialized, list(jpegs))
  except tf.errors.OpError as error:
    raise ValueError(f'{shard_path} is damaged ({error.message}); prepare it again.') from None
  return builder


def read_index_file(shard_path: str) -> dict[str, np.ndarray]:
  """The saved frame index of a shard; FileNotFoundError naming it and the fix if missing."""
  import tensorflow as tf
  path = index_path(shard_path)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f'{path} is missing: the training reader reads single frames through it. Create it '
        'with `python -m input_pipeline.frame_index --records=DIR` (records prepared before the '
        'frame index existed), or prepare the records again.')
  with tf.io.gfile.GFile(path, 'rb') as f:
    index = dict(np.load(io.BytesIO(f.read())))
  if 'crc32' not in index:
    raise ValueError(f'{path} predates frame checksums: rebuild it with `python -m '
                     'input_pipeline.frame_index --records=DIR`.')
  return index


def build_shard_index(shard_path: str, record_format: str = records.SEQUENCE_EXAMPLE) -> None:
  """Writes ``shard-*.frames.npz`` for an existing shard (see index_of_shard)."""
  index_of_shard(shard_path, record_format).save(index_path(shard_path))


class HostFrames:
  """The frame index of one host's shards, and reads of single frames from them.

  Videos are numbered 0..V-1 in the host's shard order and record order (the order the
  stream's shard numbers and record positions describe).
  """

  def __init__(self, shard_paths: Sequence[str]):
    # One open file per shard, shared by every reading thread. Not one per thread: reads come
    # through tf.py_function from TensorFlow's threads, whose Python thread state (and any
    # thread-local data) is made anew for every call, so per-thread files leaked one
    # descriptor per example until the process ran out.
    self._files: dict[int, object] = {}
    self._seek_locks: dict[int, threading.Lock] = {}
    self._open_lock = threading.Lock()
    offsets, lengths, crcs, counts, shard_of_video = [], [], [], [], []
    for shard_number, path in enumerate(shard_paths):
      index = read_index_file(path)
      offsets.append(index['offsets'])
      lengths.append(index['lengths'])
      crcs.append(index['crc32'])
      counts.append(index['frames_per_record'])
      shard_of_video.append(np.full(len(counts[-1]), shard_number, np.int32))
    self.paths = list(shard_paths)
    self.offsets = np.concatenate(offsets)
    self.lengths = np.concatenate(lengths).astype(np.int64)
    self.crcs = np.concatenate(crcs)
    self.frames_per_video = np.concatenate(counts)
    self.first_frame = np.concatenate([[0], np.cumsum(self.frames_per_video)[:-1]]).astype(np.int64)
    self.shard_of_video = np.concatenate(shard_of_video)
    self.videos_per_shard = np.asarray([len(c) for c in counts], np.int64)

  def _file(self, shard: int):
    """The shard's open file: a descriptor read with os.pread for local files (no shared
    offset, no GIL held), a gfile handle for other filesystems (gs://...), read under its
    shard's lock since it reads by seek and read."""
    with self._open_lock:
      if shard not in self._files:
        path = self.paths[shard]
        if '://' in path:
          import tensorflow as tf
          self._seek_locks[shard] = threading.Lock()
          self._files[shard] = tf.io.gfile.GFile(path, 'rb')
        else:
          self._files[shard] = os.open(path, os.O_RDONLY)
      return self._files[shard]

  def close(self) -> None:
    """Closes the shards' files (reads after this open them again)."""
    with self._open_lock:
      for handle in self._files.values():
        if isinstance(handle, int):
          os.close(handle)
        else:
          handle.close()
      self._files.clear()

  def __del__(self, _finalizing=sys.is_finalizing):
    # At exit the process closes the files, and module globals (os) may be gone already.
    if not _finalizing():
      self.close()

  def read(self, video: int, frames: np.ndarray) -> tuple[list[bytes], int]:
    """(JPEG bytes of ``frames`` (indices within the video) of host video ``video``, status).

    The status is a damage.py code: OK, TRUNCATED_FRAME (the file ends before a frame),
    CHECKSUM (a frame's bytes changed) or UNREADABLE (the shard cannot be opened or read).
    """
    from input_pipeline import damage
    rows = self.first_frame[video] + frames
    out = []
    try:
      shard = int(self.shard_of_video[video])
      handle = self._file(shard)
      if isinstance(handle, int):
        for offset, length in zip(self.offsets[rows], self.lengths[rows]):
          out.append(os.pread(handle, int(length), int(offset)))
      else:
        with self._seek_locks[shard]:
          for offset, length in zip(self.offsets[rows], self.lengths[rows]):
            handle.seek(int(offset))
            out.append(handle.read(int(length)))
    except Exception:  # pylint: disable=broad-except
      # OSError locally, tf.errors on other filesystems: the shard is gone or unreadable.
      return [], damage.UNREADABLE
    if any(len(jpeg) != length for jpeg, length in zip(out, self.lengths[rows])):
      return [], damage.TRUNCATED_FRAME
    if any(zlib.crc32(jpeg) != crc for jpeg, crc in zip(out, self.crcs[rows])):
      return [], damage.CHECKSUM
    return out, damage.OK

  def bytes_of(self, video: int, frames: np.ndarray) -> int:
    return int(self.lengths[self.first_frame[video] + frames].sum())


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--records', required=True, help='prepared records directory')
  parser.add_argument('--splits', default='train', help='comma-separated splits')
  args = parser.parse_args(argv)
  for split in args.splits.split(','):
    index = records.read_index(args.records, split)
    shards = index['shards']
    for number, shard in enumerate(shards):
      build_shard_index(shard['path'], index['record_format'])
      print(f'{split}: frame index of shard {number + 1}/{len(shards)} written '
            f'({index_path(shard["path"])})', flush=True)


if __name__ == '__main__':
  main()
