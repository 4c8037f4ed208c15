"""The index files of a prepared split without its records: what the config checks read
(input_pipeline/split_index.py), written in seconds for tests that never read a frame."""

import json
import os

import numpy as np


def write_split_index(records_dir, split, frames_per_video, num_shards=1, named=None):
  """``records_dir/split/index.json`` naming split ``named`` (default ``split``) and a frame
  index per shard; videos go to shards in turn. Returns the split folder."""
  folder = os.path.join(str(records_dir), split)
  os.makedirs(folder, exist_ok=True)
  shards = []
  for shard in range(num_shards):
    counts = np.asarray(frames_per_video[shard::num_shards], np.int64)
    name = f'shard-{shard:05d}-of-{num_shards:05d}'
    np.savez(os.path.join(folder, name + '.frames.npz'), frames_per_record=counts,
             offsets=np.zeros(counts.sum(), np.int64), lengths=np.zeros(counts.sum(), np.int32),
             crc32=np.zeros(counts.sum(), np.uint32))
    shards.append({'path': name + '.tfrecord', 'num_videos': len(counts),
                   'num_frames': int(counts.sum()), 'num_bytes': 0})
  index = {'split': named or split, 'num_videos': len(frames_per_video),
           'num_frames': int(sum(frames_per_video)), 'num_classes': 0, 'class_names': [],
           'shards': shards}
  with open(os.path.join(folder, 'index.json'), 'w') as f:
    json.dump(index, f)
  return folder
