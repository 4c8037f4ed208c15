"""Which frames the readers pick, checked on videos whose frames carry their own index.

The videos are reference-style JPEG frame folders prepared through ``--source=frames``: in
frame i of a video of F frames every pixel is (8 i, 8 F, 128), so after a crop (a constant
image stays constant) the red channel tells the frame and the green one the video.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from input_pipeline import eval_reader
from input_pipeline import prepare
from input_pipeline import record_stream
from input_pipeline import train_reader
from input_pipeline import tsn_reader
from input_pipeline import vclr_sampling
from vclr_jax import batch as batch_layout

VIDEO_LENGTHS = (6, 7, 8, 17, 30)
FRAME_SIZE = (32, 40)  # the coded frames' own size: decoded, not resized
ALLOWED_PERMS = {tuple(p) for p in batch_layout.SHUFFLES} | {(0, 1, 2)}


@pytest.fixture(scope='module')
def index_coded_records(tmp_path_factory):
  root = tmp_path_factory.mktemp('frames')
  lines = []
  for video, length in enumerate(VIDEO_LENGTHS):
    folder = root / 'train' / 'coded' / f'video_{video}'
    folder.mkdir(parents=True)
    for i in range(length):
      Image.new('RGB', (40, 32), (8 * i, 8 * length, 128)).save(
          folder / f'frame_{i + 1:05d}.jpg', quality=95)
    lines.append(f'coded/video_{video} {length} 0\n')
  (root / 'train.txt').write_text(''.join(lines))
  records_dir = str(root / 'records')
  prepare.main(['--source=frames', f'--root={root}', '--splits=train', f'--out={records_dir}',
                '--num_shards=2', '--workers=1'])
  return records_dir


def _decode_codes(frames):
  """(..., H, W, 3) uint8 constant frames -> (frame index, video length) int arrays."""
  pixels = frames.mean(axis=(-3, -2))
  return np.rint(pixels[..., 0] / 8).astype(int), np.rint(pixels[..., 1] / 8).astype(int)


def _check_example_invariants(query, key, anchor, query_perm, key_perm, length):
  starts = [0, length // 3, 2 * (length // 3)]
  ends = [length // 3, 2 * (length // 3), length]
  for segment in range(3):
    assert starts[segment] <= query[segment] < ends[segment]
    assert starts[segment] <= key[segment] < ends[segment]
    assert query[segment] != key[segment]
  assert anchor in (0, 2)
  assert tuple(query_perm) in ALLOWED_PERMS and tuple(key_perm) in ALLOWED_PERMS


def test_index_sampling_invariants_and_frequencies():
  draws = 4000
  length = 20
  samples = (tf.data.Dataset.range(draws)
             .map(lambda i: vclr_sampling.sample_vclr_indices(
                 length, tf.random.experimental.stateless_fold_in(tf.constant([7, 0], tf.int64),
                                                                  i)))
             .batch(draws).get_single_element())
  samples = {k: v.numpy() for k, v in samples.items()}
  for i in range(draws):
    query, key = samples['query_indices'][i], samples['key_indices'][i]
    _check_example_invariants(query, key, samples['anchor'][i],
                              samples['query_perm'][i], samples['key_perm'][i], length)
  np.testing.assert_array_equal(
      samples['order_label'], batch_layout.order_label(samples['query_perm'],
                                                       samples['key_perm']))
  # Four labels, two anchors, four shuffles: each about equally likely (5 sigma bounds).
  for counts, expected in ((np.bincount(samples['order_label'], minlength=4), draws / 4),
                           (np.bincount(samples['anchor'], minlength=3)[[0, 2]], draws / 2)):
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
  shuffled = [tuple(p) for p in np.concatenate([samples['query_perm'], samples['key_perm']])
              if tuple(p) != (0, 1, 2)]
  perm_counts = collections.Counter(shuffled)
  assert set(perm_counts) == {tuple(p) for p in batch_layout.SHUFFLES}
  expected = len(shuffled) / 4
  assert all(abs(n - expected) < 5 * np.sqrt(expected) for n in perm_counts.values())
  # Within a segment of 6 frames (the last one of F=20) every frame gets picked, in both tuples.
  assert set(samples['query_indices'][:, 2]) == set(range(12, 20))
  assert set(samples['key_indices'][:, 2]) == set(range(12, 20))


def test_train_reader_picks_frames_by_the_rules(index_coded_records):
  iterator = train_reader.make_train_iterator(
      index_coded_records, 'train', batch_size=10, frame_size=FRAME_SIZE, seed=3,
      process_index=0, process_count=1, options=record_stream.ReaderOptions(cycle_length=2))
  seen_lengths = set()
  for _ in range(12):
    batch = next(iterator)
    assert batch['frames'].dtype == np.uint8 and batch['frames'].shape == (10, 6, 32, 40, 3)
    indices, lengths = _decode_codes(batch['frames'])
    query, key = indices[:, :3], indices[:, 3:]
    for i in range(10):
      length = lengths[i, 0]
      assert set(lengths[i]) == {length}
      _check_example_invariants(query[i], key[i], batch['anchor'][i],
                                batch['query_perm'][i], batch['key_perm'][i], length)
      seen_lengths.add(length)
  assert seen_lengths == set(VIDEO_LENGTHS)


def test_eval_reader_takes_rounded_linspace_frames(index_coded_records):
  batches = list(eval_reader.make_eval_iterator(
      index_coded_records, 'train', batch_size=4, num_frames=5, crop_size=16, process_index=0,
      process_count=1))
  assert len(batches) == 2
  frames = np.concatenate([b['frames'] for b in batches])
  assert frames.dtype == np.uint8  # normalised on the device
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.tolist() == [True] * 5 + [False] * 3
  indices, lengths = _decode_codes(frames[mask])
  for video_indices, video_lengths in zip(indices, lengths):
    length = video_lengths[0]
    np.testing.assert_array_equal(video_indices, np.round(np.linspace(1, length, 5)) - 1)
  np.testing.assert_array_equal(np.concatenate([b['frames'] for b in batches])[~mask], 0)


def test_uniform_frame_indices_match_numpy():
  for length in (1, 5, 30, 251, 300):
    for count in (1, 8, 25, 30):
      expected = np.round(np.linspace(1, length, count)).astype(int) - 1
      np.testing.assert_array_equal(eval_reader.uniform_frame_indices(length, count), expected)


def test_tsn_sampler_takes_one_frame_per_segment(index_coded_records):
  segments = 3
  iterator = tsn_reader.make_tsn_train_iterator(
      index_coded_records, 'train', batch_size=5, frame_size=FRAME_SIZE, num_segments=segments,
      seed=0, process_index=0, process_count=1)
  picked = collections.defaultdict(set)
  for _ in range(8):
    indices, lengths = _decode_codes(next(iterator)['frames'])
    for video_indices, video_lengths in zip(indices, lengths):
      length = video_lengths[0]
      bounds = np.floor(np.linspace(0, length, segments + 1)).astype(int)
      for segment, index in enumerate(video_indices):
        assert bounds[segment] <= index < bounds[segment + 1]
        picked[(length, segment)].add(index)
  # Frames are random within segments, not fixed.
  assert len(picked[(30, 1)]) > 3
