"""Records on a filesystem other than the local disk: TensorFlow's ram://.

Preparation writes there and the readers read back, through tf.io.gfile only; everything must
equal the same records prepared on the local disk.
"""

import uuid

import numpy as np
import tensorflow as tf

from frame_folders import prepare_argv, write_frame_folders
from input_pipeline import eval_reader
from input_pipeline import prepare
from input_pipeline import record_stream
from input_pipeline import records
from input_pipeline import train_reader
from input_pipeline import verify

READER = dict(process_index=0, process_count=1)


def _assert_same_batches(first, second):
  for a, b in zip(first, second, strict=True):
    assert a.keys() == b.keys()
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_prepare_and_readers_on_ram_filesystem(tmp_path):
  write_frame_folders(str(tmp_path / 'videos'), [6, 7, 8, 9, 6, 7])
  local = str(tmp_path / 'records')
  remote = f'ram://vclr-{uuid.uuid4().hex}/records'
  for out in (local, remote):
    prepare.main(prepare_argv(str(tmp_path / 'videos'), out, videos_per_shard=2))
  local_shards = records.read_index(local, 'train')['shards']
  remote_shards = records.read_index(remote, 'train')['shards']
  assert [s['path'] for s in remote_shards] == [
      s['path'].replace(local, remote) for s in local_shards]
  for a, b in zip(local_shards, remote_shards):
    with open(a['path'], 'rb') as f, tf.io.gfile.GFile(b['path'], 'rb') as g:
      assert f.read() == g.read()
  assert verify.main([f'--records={remote}', '--quick']) == 0

  options = record_stream.ReaderOptions(cycle_length=2, shuffle_buffer=2)
  train = [train_reader.make_train_iterator(out, 'train', batch_size=3, frame_size=(40, 56),
                                            seed=1, options=options, **READER)
           for out in (local, remote)]
  _assert_same_batches(*([next(it) for _ in range(3)] for it in train))
  evaluated = [list(eval_reader.make_eval_iterator(out, 'train', batch_size=4, num_frames=3,
                                                   crop_size=32, **READER))
               for out in (local, remote)]
  _assert_same_batches(*evaluated)
  assert sum(batch['mask'].sum() for batch in evaluated[1]) == 6
