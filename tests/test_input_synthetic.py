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
                                                  np.random.default_rng([0, video]), 'actions')
    lengths.append(len(frames) / fps)
    sizes.add(frames.shape[1:3])
    assert frames.dtype == np.uint8 and frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
    # One switch between the two phases, each holding a good part of the video.
    assert set(playing) == {0, 1} and np.count_nonzero(np.diff(playing)) == 1
    assert 0.25 < np.mean(playing == 0) < 0.75
    first_phases.add(int(playing[0]))
    # What the frames show matches the phase said to play: horizontal bars change along y,
    # vertical rain streaks along x (in nearly every frame: the round grains and the scenery
    # change along both, and can outweigh a few thin streaks).
    matches = [(_edge_energy(frame)[1] > _edge_energy(frame)[0]) == (phase == 0)
               for frame, phase in zip(frames, playing)]
    assert np.mean(matches) >= 0.85, (video, matches)
  assert min(lengths) < 1.0 and max(lengths) > 1.8
  assert len(sizes) >= 3
  assert first_phases == {0, 1}


def _colour_histogram(frame, bins=4):
  quantised = (frame.reshape(-1, 3) // (256 // bins)).astype(np.int64)
  counts = np.bincount((quantised * [bins * bins, bins, 1]).sum(axis=1), minlength=bins ** 3)
  return counts / counts.sum()


@pytest.mark.parametrize('variant', ['actions', 'scenes'])
def test_a_video_keeps_its_identity_across_phases(variant):
  # The frames of a video, far apart in time (other phase included), look more alike than
  # frames of other videos of the same class: each frame's nearest neighbour by colour
  # histogram, among frames at least a third of a video away in its own video and all frames
  # of the others, comes from its own video.
  videos = [synthetic.render_video(('stripes', 'checker'), np.random.default_rng([1, video]),
                                   variant)[0] for video in range(12)]
  histograms = [np.stack([_colour_histogram(frame) for frame in frames]) for frames in videos]
  hits = []
  for video, frames in enumerate(histograms):
    for index, histogram in enumerate(frames):
      far = np.abs(np.arange(len(frames)) - index) >= len(frames) / 3
      own = np.abs(frames[far] - histogram).sum(axis=1).min()
      others = min(np.abs(h - histogram).sum(axis=1).min()
                   for other, h in enumerate(histograms) if other != video)
      hits.append(own < others)
  assert np.mean(hits) > 0.9, np.mean(hits)


def test_grains_cover_a_growing_share_of_any_crop():
  height, width = 96, 128
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  joins = synthetic._make_grains(np.random.default_rng(3), yy, xx)
  positions = np.linspace(0, 1, 21)
  shares = np.array([np.mean(joins <= p) for p in positions])
  assert shares[0] == 0 and np.all(np.diff(shares) >= 0)
  assert 0.2 < shares[-1] < 0.3
  # Grains appear at evenly spaced times, so the share grows steadily, not in a few jumps.
  assert np.abs(shares - positions * shares[-1]).max() < 0.05
  # A crop of a fifth of the frame, anywhere, still shows more grains late than early: what lets
  # one augmented frame tell roughly where it lies in time.
  rng = np.random.default_rng(0)
  later = []
  for _ in range(50):
    h, w = int(height * 0.45), int(width * 0.45)
    top, left = rng.integers(0, height - h), rng.integers(0, width - w)
    crop = joins[top:top + h, left:left + w]
    later.append(np.mean(crop <= 0.8) > np.mean(crop <= 0.2))
  assert np.mean(later) > 0.95


def _colour_drawn_one_at_a_time(rng, luma):
  """How the datasets made so far drew a colour of a luma: uniform colours until one fits."""
  while True:
    colour = rng.uniform(0, 255, 3)
    colour = colour + (luma - float(synthetic._LUMA @ colour))
    if colour.min() >= 0 and colour.max() <= 255:
      return colour.astype(np.float32)


def test_colours_of_a_luma_are_drawn_as_before_and_never_hang(monkeypatch):
  # Same colours and same generator position as one draw at a time, so a seed keeps its videos;
  # near black and white the first fit lies past the first block of draws.
  for seed in range(4):
    one_at_a_time, in_blocks = np.random.default_rng(seed), np.random.default_rng(seed)
    for luma in (0.5, 128.0, 254.5):
      expected = _colour_drawn_one_at_a_time(one_at_a_time, luma)
      np.testing.assert_array_equal(synthetic._colour_of_luma(in_blocks, luma), expected)
    assert one_at_a_time.uniform() == in_blocks.uniform()
  # Exactly at black or white no draw fits (near them, hardly any): the closed form takes over.
  monkeypatch.setattr(synthetic, 'REJECTION_BLOCKS', 2)
  rng = np.random.default_rng(0)
  for luma in (0.0, 0.01, 254.99, 255.0):
    colour = synthetic._colour_of_luma(rng, luma)
    assert colour.min() >= 0 and colour.max() <= 255
    assert abs(float(colour @ synthetic._LUMA) - luma) < 1e-3
  np.testing.assert_array_equal(synthetic._colour_of_luma(rng, 255.0), [255, 255, 255])


def _luma(frame):
  return frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def test_variants_share_the_actions_videos_draws():
  for video in range(4):
    def render(variant, video=video):
      return synthetic.render_video(('ball', 'checker'), np.random.default_rng([2, video]), variant)
    actions, fps, playing = render('actions')
    staged, staged_fps, staged_playing = render('staged')
    assert staged.shape == actions.shape and staged_fps == fps
    np.testing.assert_array_equal(staged_playing, playing)
    for variant in ('scenes', 'wide_stage'):
      scenes, scenes_fps, scenes_playing = render(variant)
      assert scenes.shape == actions.shape and scenes_fps == fps
      np.testing.assert_array_equal(scenes_playing, playing)
    stills, stills_fps, stills_playing = render('stills')
    middle = len(actions) // 2
    assert stills_fps == fps and stills.shape == actions.shape
    np.testing.assert_array_equal(stills, np.broadcast_to(actions[middle], actions.shape))
    np.testing.assert_array_equal(stills_playing, np.full_like(playing, playing[middle]))
  with pytest.raises(ValueError, match='variants are'):
    synthetic.render_video(('ball', 'checker'), np.random.default_rng(0), 'moving')


def test_staged_frames_of_the_first_and_last_segment_share_most_pixels():
  # The phases change only on the stage (at most half the frame), so between a video's first
  # and last frames fewer pixels change than in the actions video, where the pattern covers
  # the frame; the grains (GRAIN_COVERAGE of the frame by the end) change in both.
  changed = {'actions': [], 'staged': []}
  for video in range(6):
    for phases in (('ball', 'rain'), ('stripes', 'checker'), ('bars', 'rings')):
      for variant, shares in changed.items():
        frames, _, _ = synthetic.render_video(phases, np.random.default_rng([5, video]), variant)
        shares.append(np.mean(np.abs(_luma(frames[0]) - _luma(frames[-1])) > 30))
  assert max(changed['staged']) < 0.5, changed['staged']
  assert np.mean(changed['staged']) < np.mean(changed['actions']) - 0.1, changed


@pytest.mark.parametrize('area_share', [synthetic.STAGE_AREA, synthetic.SCENES_STAGE_AREA,
                                        synthetic.WIDE_STAGE_AREA])
def test_the_stage_is_a_rectangle_of_its_share_of_the_frame(area_share):
  yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
  places = set()
  for seed in range(40):
    stage = synthetic._make_stage(np.random.default_rng(seed), yy, xx, area_share)
    rows, columns = np.flatnonzero(stage.any(axis=1)), np.flatnonzero(stage.any(axis=0))
    assert stage[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1].all()  # filled box
    assert stage.sum() == len(rows) * len(columns)
    low, high = area_share
    assert low - 0.03 < stage.mean() < high + 0.03
    places.add((rows[0], columns[0]))
  assert len(places) > 30


def test_every_crop_of_a_fifth_of_the_frame_shows_the_wallpaper():
  yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
  masks = []
  for seed in range(24):
    rng = np.random.default_rng(seed)
    mask = synthetic._make_wallpaper(rng, yy, xx)
    masks.append(mask)
    for _ in range(20):  # crops of 20% of the area, as MoCo v2's smallest
      height, width = 43, 57
      top, left = rng.integers(0, 96 - height + 1), rng.integers(0, 128 - width + 1)
      share = mask[top:top + height, left:left + width].mean()
      assert 0.03 < share < 0.8, (seed, share)
  # Videos differ in their wallpaper: no two masks are the same.
  assert len({mask.tobytes() for mask in masks}) == len(masks)


def _hue(colour):
  """The angle of a colour's (Cb, Cr) chroma (BT.601), written out independently."""
  red, green, blue = (float(c) for c in colour)
  luma = 0.299 * red + 0.587 * green + 0.114 * blue
  return np.arctan2((red - luma) / 1.402, (blue - luma) / 1.772) % (2 * np.pi)


def test_a_colour_of_luma_and_hue_has_them():
  rng = np.random.default_rng(3)
  for luma in (20.0, 90.0, 128.0, 200.0, 240.0):
    for hue in np.linspace(0, 2 * np.pi, 13)[:-1]:
      colour = synthetic._colour_of_luma_and_hue(rng, luma, hue)
      assert colour.min() >= 0 and colour.max() <= 255 + 1e-3
      assert abs(float(colour @ synthetic._LUMA) - luma) < 1e-2
      assert abs((_hue(colour) - hue + np.pi) % (2 * np.pi) - np.pi) < 1e-3
      assert np.ptp(colour) > 5  # a colour, not a grey


@pytest.mark.parametrize('home_share', [synthetic.HOME_SHARE, synthetic.WIDE_HOME_SHARE])
def test_a_scene_is_its_class_home_at_its_share(home_share):
  draws, count = 6000, len(synthetic.WALLPAPER_SHAPES)
  rng = np.random.default_rng(7)
  for home in (2, 11):
    styles = [synthetic._scene_style(rng, home, home_share) for _ in range(draws)]
    shapes = np.array([shape for shape, _ in styles])
    offsets = np.array([(hue - 2 * np.pi * home / synthetic.MAX_CLASSES + np.pi) % (2 * np.pi)
                        - np.pi for _, hue in styles])
    at_home_hue = np.abs(offsets) <= synthetic.HUE_JITTER
    away = 1 - home_share
    expected = np.full(count, away / count)
    expected[home % count] += home_share
    np.testing.assert_allclose(np.bincount(shapes, minlength=count) / draws, expected,
                               atol=0.015)
    # An away video's hue lands in the home band by chance: 2 HUE_JITTER of the circle.
    np.testing.assert_allclose(
        at_home_hue.mean(), home_share + away * synthetic.HUE_JITTER / np.pi,
        atol=0.015)
    # Shape and hue go home together.
    assert (shapes[at_home_hue] == home % count).mean() > 0.9  # 0.95: away ones add 5%


@pytest.mark.parametrize('variant, home_share', [('scenes', synthetic.HOME_SHARE),
                                                 ('wide_stage', synthetic.WIDE_HOME_SHARE)])
def test_every_class_of_the_scenes_variants_has_its_own_home(monkeypatch, variant, home_share):
  homes = {}
  draw_style = synthetic._scene_style

  def recording(rng, home, share):
    homes[current] = home, share
    return draw_style(rng, home, share)
  monkeypatch.setattr(synthetic, '_scene_style', recording)
  names = synthetic.class_names(synthetic.MAX_CLASSES)
  for current in names:
    synthetic.render_video(tuple(current.split('-')), np.random.default_rng(0), variant)
  assert [homes[name] for name in names] == [(home, home_share) for home in range(len(names))]
  # A class is an unordered pair: the phases in the other order stand in the same home.
  current = 'reversed'
  synthetic.render_video(('rings', 'ball'), np.random.default_rng(0), variant)
  assert homes['reversed'] == homes['ball-rings']
  homes.clear()
  for variant in ('actions', 'staged', 'stills'):
    synthetic.render_video(('ball', 'rain'), np.random.default_rng(0), variant)
  assert not homes  # only scenes videos have a home


def test_scenes_videos_of_a_class_stand_in_its_home_hue_more_often():
  names = synthetic.class_names(synthetic.MAX_CLASSES)

  def wallpaper_hues(label, video):
    frames, _, _ = synthetic.render_video(tuple(names[label].split('-')),
                                          np.random.default_rng([9, label, video]), 'scenes')
    # The wallpaper's two colours are the first frame's most frequent ones.
    colours, counts = np.unique(frames[0].reshape(-1, 3), axis=0, return_counts=True)
    return [_hue(colours[i]) for i in np.argsort(counts)[-2:]]

  def share_near(label, home):
    centre = 2 * np.pi * home / synthetic.MAX_CLASSES
    return np.mean([any(abs((hue - centre + np.pi) % (2 * np.pi) - np.pi) < 0.35
                        for hue in wallpaper_hues(label, video)) for video in range(16)])
  # Class 0 at home about half the time; class 6's home is on the other side of the circle.
  assert share_near(0, 0) > share_near(0, 6) + 0.25, (share_near(0, 0), share_near(0, 6))


@pytest.mark.parametrize('variant', ['scenes', 'wide_stage'])
def test_scenes_snow_is_white_grows_and_is_the_only_white(variant):
  shares = []
  for video in range(6):
    frames, _, _ = synthetic.render_video(('bars', 'rings'), np.random.default_rng([4, video]),
                                          variant)
    # White: every channel at 250 or more. No other layer comes near: the bright colours
    # stop SNOW_LUMA - MIN_LUMA_CONTRAST / 2 short of it, a frame's wobble moves them a little.
    white = (frames.min(axis=-1) >= 250).mean(axis=(1, 2))
    assert white[0] < 0.03 and np.all(np.diff(white) >= 0), white  # the first frame: a little
    assert 0.2 < white[-1] < 0.3, white[-1]
    shares.append(white[-1])
    # Where it has fallen, the snow is pure white.
    last = frames[-1].reshape(-1, 3)
    snow = last.min(axis=-1) >= 250
    assert (last[snow] == 255).all()
  # The other variants keep their grains in the scenery's colour: rarely all white.
  actions, _, _ = synthetic.render_video(('bars', 'rings'), np.random.default_rng([4, 0]),
                                         'actions')
  assert (actions[-1].min(axis=-1) >= 250).mean() < min(shares) / 2


def test_the_wide_stage_shows_the_action_larger_and_in_every_frame(monkeypatch):
  # The scenes videos draw their phases in the frame's coordinates and show them only on a
  # stage of 20-30% of the frame, so a ball elsewhere leaves frames without any action; the
  # wide stage covers most of the frame and its phases are squeezed onto it whole. Measured by
  # the pixels of the phases' colour (at least MIN_LUMA_CONTRAST from every other layer).
  colours = {}
  draw_colours = synthetic._video_colours

  def recording(*args, **kwargs):
    drawn = draw_colours(*args, **kwargs)
    colours['phases'] = drawn[2]
    return drawn
  monkeypatch.setattr(synthetic, '_video_colours', recording)
  shares = {}
  for variant in ('scenes', 'wide_stage'):
    per_frame = []
    for video in range(8):
      for phases in (('ball', 'rain'), ('stripes', 'checker'), ('bars', 'rings')):
        frames, _, _ = synthetic.render_video(phases, np.random.default_rng([6, video]), variant)
        distance = np.linalg.norm(frames.astype(np.float32) - colours['phases'], axis=-1)
        per_frame.append((distance < 40).mean(axis=(1, 2)))
    shares[variant] = np.concatenate(per_frame)
  assert shares['wide_stage'].mean() > 2 * shares['scenes'].mean(), shares
  assert shares['wide_stage'].min() > 0.02  # every frame shows some of the action
  assert (shares['scenes'] < 0.02).mean() > 0.05  # not so on the small stage


def test_generator_settings_are_written_last_and_checked_by_prepare(tmp_path):
  settings = dict(seed=3, num_classes=2, videos_per_class=4)
  out = str(tmp_path / 'data')
  records = synthetic.prepare_synthetic(out, **settings, videos_per_shard=2)
  written = synthetic.generated_settings(os.path.join(out, 'videos'))
  assert written == {**settings, 'test_fraction': synthetic.DEFAULT_TEST_FRACTION,
                     'variant': synthetic.DEFAULT_VARIANT}
  # The same settings again: the videos are not made again.
  shards = sorted(os.listdir(records))
  generator_file = os.path.join(out, 'videos', synthetic.GENERATOR_FILE)
  stamp = os.path.getmtime(generator_file)
  assert synthetic.prepare_synthetic(out, **settings, videos_per_shard=2) == records
  assert os.path.getmtime(generator_file) == stamp
  # Other settings: an error that names the folder, and nothing touched.
  with pytest.raises(ValueError, match='holds a synthetic dataset made with'):
    synthetic.prepare_synthetic(out, **settings, variant='actions', videos_per_shard=2)
  assert sorted(os.listdir(records)) == shards
  # A folder of an earlier version (no generator.json): the videos are made again and the
  # records, which may be of other videos, with them.
  os.remove(generator_file)
  stale = os.path.join(records, 'stale-from-another-dataset')
  open(stale, 'w').close()
  synthetic.prepare_synthetic(out, **settings, videos_per_shard=2)
  assert not os.path.exists(stale) and sorted(os.listdir(records)) == shards
  assert synthetic.generated_settings(os.path.join(out, 'videos')) == written
