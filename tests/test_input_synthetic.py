"""The synthetic dataset: determinism, class structure, variety, real H.264 files."""

import collections
import filecmp
import os

import av
import numpy as np
import pytest

from input_pipeline import synthetic


def test_same_seed_same_files_other_seed_other_files(tmp_path):
  paths = {}
  for name, seed in (('a', 1), ('b', 1), ('c', 2)):
    synthetic.generate(str(tmp_path / name), seed=seed, num_classes=3, videos_per_class=2,
                       test_fraction=0.5, show_progress=False)
    paths[name] = sorted(os.path.relpath(os.path.join(d, f), tmp_path / name)
                         for d, _, files in os.walk(tmp_path / name) for f in files)
  assert paths['a'] == paths['b'] == paths['c']
  _, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', paths['a'], shallow=False)
  assert not mismatch and not errors
  _, mismatch, _ = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'c', paths['a'], shallow=False)
  assert any(path.endswith('.mp4') for path in mismatch)
  listed = open(tmp_path / 'a' / 'train.txt').read().split('\n')
  assert len([line for line in listed if line]) == 3
  with av.open(str(tmp_path / 'a' / listed[0].split()[0])) as container:
    assert container.streams.video[0].codec_context.name == 'h264'


def test_classes_are_unordered_phase_pairs_sharing_phases():
  names = synthetic.class_names(12)
  pairs = [frozenset(name.split('-')) for name in names]
  assert len(set(pairs)) == 12 and all(len(pair) == 2 for pair in pairs)
  uses = collections.Counter(phase for pair in pairs for phase in pair)
  assert set(uses) == set(synthetic.PHASES)
  assert min(uses.values()) >= 2  # Every phase seen in one frame fits several classes.
  with pytest.raises(ValueError, match='num_classes'):
    synthetic.class_names(synthetic.MAX_CLASSES + 1)


def _edge_energy(frame):
  """Mean absolute luminance change along x and along y."""
  luma = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.abs(np.diff(luma, axis=1)).mean(), np.abs(np.diff(luma, axis=0)).mean()


def test_videos_vary_and_play_their_phases_in_both_orders():
  lengths, sizes, first_phases = [], set(), set()
  for video in range(24):
    frames, fps, playing = synthetic.render_video(('bars', 'rain'),
                                                  np.random.default_rng([0, video]))
    lengths.append(len(frames) / fps)
    sizes.add(frames.shape[1:3])
    assert frames.dtype == np.uint8 and frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
    # One switch between the two phases, each holding a good part of the video.
    assert set(playing) == {0, 1} and np.count_nonzero(np.diff(playing)) == 1
    assert 0.25 < np.mean(playing == 0) < 0.75
    first_phases.add(int(playing[0]))
    # What the frames show matches the phase said to play: horizontal bars change along y,
    # vertical rain streaks along x.
    for frame, phase in zip(frames, playing):
      along_x, along_y = _edge_energy(frame)
      assert (along_y > along_x) == (phase == 0), (video, phase, along_x, along_y)
    # Colours are drawn for every frame.
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)
    assert np.abs(np.diff(means, axis=0)).max(axis=1).mean() > 20
  assert min(lengths) < 1.0 and max(lengths) > 1.8
  assert len(sizes) >= 3
  assert first_phases == {0, 1}
