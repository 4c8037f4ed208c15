r"""A small synthetic action dataset of real H.264 videos, for demos, tests and benchmarks.

  python -m input_pipeline.synthetic --out=data/synthetic [--seed=0 --videos_per_class=32]

Every video plays a script of two *phases* (a bouncing ball, a sliding bar, a growing square,
scrolling stripes, falling rain, a flashing background), one after the other, in random order
and with a random switch point. A class is an unordered pair of phases, so every phase is shared
by several classes: one frame or a short clip is ambiguous, only the whole video tells the class
(the paper's global-context argument), and the mean of per-frame features over the video still
separates the classes. Backgrounds, colours, sizes, positions, speeds, frame rates, lengths
(some under a second) and resolutions vary per video; everything follows from the seed.

Written in the ``list`` source layout (``classes.txt``, ``train.txt``, ``test.txt``,
``<class>/<video>.mp4``), and prepared like any real dataset::

  python -m input_pipeline.prepare --source=list --root=data/synthetic --splits=train,test \
      --out=data/synthetic_records
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Callable, Sequence

import av
import numpy as np
import tqdm

PHASES = ('ball', 'slide', 'grow', 'stripes', 'rain', 'flash')
MAX_CLASSES = len(PHASES) * (len(PHASES) - 1) // 2
# (width, height); yuv420p needs even sizes.
RESOLUTIONS = ((128, 96), (160, 120), (112, 112), (144, 108), (96, 128))
FRAME_RATES = (12, 15, 24)
DURATION_RANGE_S = (0.6, 2.5)

Canvas = np.ndarray  # (H, W, 3) float32 in [0, 255], drawn on in place.


def class_names(num_classes: int) -> list[str]:
  if not 2 <= num_classes <= MAX_CLASSES:
    raise ValueError(f'num_classes must be in [2, {MAX_CLASSES}], got {num_classes}.')
  return ['-'.join(pair) for pair in itertools.combinations(PHASES, 2)][:num_classes]


def _colour(rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(0, 255, size=3).astype(np.float32)


def _triangle_wave(x: float) -> float:
  """Position in [0, 1] of something bouncing between two walls after travelling x."""
  x = x % 2.0
  return x if x < 1.0 else 2.0 - x


def _make_phase(name: str, rng: np.random.Generator, height: int, width: int
                ) -> Callable[[Canvas, float, np.ndarray, np.ndarray], None]:
  """Draws the named phase at progress t in [0, 1] with parameters drawn once per video."""
  size = min(height, width)
  colour = _colour(rng)
  if name == 'ball':
    radius = rng.uniform(0.08, 0.18) * size
    start, speed = rng.uniform(0, 1, 2), rng.uniform(0.8, 2.5, 2) * rng.choice([-1, 1], 2)

    def draw(canvas, t, yy, xx):
      cx = radius + _triangle_wave(start[0] + speed[0] * t) * (width - 2 * radius)
      cy = radius + _triangle_wave(start[1] + speed[1] * t) * (height - 2 * radius)
      canvas[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2] = colour
  elif name == 'slide':
    bar_w, bar_h = rng.uniform(0.15, 0.35) * width, rng.uniform(0.15, 0.4) * height
    top = rng.uniform(0, height - bar_h)
    direction = rng.choice([-1.0, 1.0])

    def draw(canvas, t, yy, xx):
      left = -bar_w + (width + bar_w) * (t if direction > 0 else 1 - t)
      canvas[(xx >= left) & (xx < left + bar_w) & (yy >= top) & (yy < top + bar_h)] = colour
  elif name == 'grow':
    centre = rng.uniform(0.3, 0.7, 2) * (width, height)
    smallest, largest = rng.uniform(0.05, 0.15) * size, rng.uniform(0.4, 0.8) * size

    def draw(canvas, t, yy, xx):
      half = 0.5 * (smallest + (largest - smallest) * t)
      canvas[(np.abs(xx - centre[0]) <= half) & (np.abs(yy - centre[1]) <= half)] = colour
  elif name == 'stripes':
    period = rng.uniform(0.15, 0.3) * size
    speed = rng.uniform(1, 3) * period * rng.choice([-1, 1])

    def draw(canvas, t, yy, xx):
      on = ((xx + yy + speed * t) % period) < period / 2
      canvas[on] = 0.4 * canvas[on] + 0.6 * colour
  elif name == 'rain':
    count = int(rng.integers(6, 14))
    columns, offsets = rng.uniform(0, width, count), rng.uniform(0, 1, count)
    speeds, dot = rng.uniform(1, 3, count), rng.uniform(0.03, 0.06) * size

    def draw(canvas, t, yy, xx):
      for column, offset, speed in zip(columns, offsets, speeds):
        row = ((offset + speed * t) % 1.0) * height
        canvas[(np.abs(xx - column) <= dot) & (np.abs(yy - row) <= dot)] = colour
  elif name == 'flash':
    cycles = rng.uniform(1.5, 4)

    def draw(canvas, t, yy, xx):
      alpha = 0.7 * np.sin(np.pi * cycles * t) ** 2
      canvas *= 1 - alpha
      canvas += alpha * colour
  else:
    raise ValueError(f'Unknown phase {name!r}; phases are {PHASES}.')
  return draw


def _background(rng: np.random.Generator, height: int, width: int) -> Canvas:
  """A random linear gradient between two colours, so no background colour identifies a class."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  angle = rng.uniform(0, 2 * np.pi)
  ramp = np.cos(angle) * xx / width + np.sin(angle) * yy / height
  ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
  return (_colour(rng) * (1 - ramp[..., None]) + _colour(rng) * ramp[..., None]).astype(np.float32)


def render_video(phases: tuple[str, str], rng: np.random.Generator
                 ) -> tuple[np.ndarray, int]:
  """The frames (T, H, W, 3) uint8 and frame rate of one video playing the two ``phases`` one
  after the other, in random order."""
  width, height = RESOLUTIONS[rng.integers(len(RESOLUTIONS))]
  fps = int(FRAME_RATES[rng.integers(len(FRAME_RATES))])
  num_frames = max(6, int(round(rng.uniform(*DURATION_RANGE_S) * fps)))
  order = rng.permutation(len(phases))
  drawers = [_make_phase(phases[i], rng, height, width) for i in order]
  # Each phase gets between 35% and 65% of the video.
  bounds = np.array([0.0, rng.uniform(0.35, 0.65), 1.0])
  background = _background(rng, height, width)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for index in range(num_frames):
    position = (index + 0.5) / num_frames
    phase = int(position >= bounds[1])
    progress = (position - bounds[phase]) / (bounds[phase + 1] - bounds[phase])
    canvas = background.copy()
    drawers[phase](canvas, progress, yy, xx)
    frames[index] = np.clip(canvas, 0, 255).astype(np.uint8)
  return frames, fps


def write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
  with av.open(path, 'w') as container:
    stream = container.add_stream('libx264', rate=fps)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = 'yuv420p'
    stream.options = {'preset': 'ultrafast', 'crf': '18'}
    # One thread: multi-threaded x264 may split slices differently from run to run.
    stream.codec_context.thread_count = 1
    for rgb in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')))
    container.mux(stream.encode())


def generate(out_dir: str, *, seed: int = 0, num_classes: int = 12, videos_per_class: int = 32,
             test_fraction: float = 0.25, show_progress: bool = True) -> str:
  """Writes the dataset under ``out_dir`` (list layout) and returns ``out_dir``."""
  if 'libx264' not in av.codecs_available:
    raise RuntimeError('This PyAV build has no libx264 encoder; install the PyPI wheel of av, '
                       'which bundles it.')
  names = class_names(num_classes)
  num_test = int(round(videos_per_class * test_fraction))
  if videos_per_class < 2 or not 0 < num_test < videos_per_class:
    raise ValueError(f'videos_per_class={videos_per_class} with test_fraction={test_fraction} '
                     'leaves a split empty; use at least 2 videos per class.')
  os.makedirs(out_dir, exist_ok=True)
  lists = {'train': [], 'test': []}
  jobs = [(label, video) for label in range(num_classes) for video in range(videos_per_class)]
  for label, video in tqdm.tqdm(jobs, desc='synthetic videos', unit='video',
                                disable=not show_progress):
    rng = np.random.default_rng([seed, label, video])
    frames, fps = render_video(tuple(names[label].split('-')), rng)
    relative = f'{names[label]}/{names[label]}_{video:03d}.mp4'
    os.makedirs(os.path.join(out_dir, names[label]), exist_ok=True)
    write_mp4(os.path.join(out_dir, relative), frames, fps)
    split = 'test' if video >= videos_per_class - num_test else 'train'
    lists[split].append(f'{relative} {label}\n')
  with open(os.path.join(out_dir, 'classes.txt'), 'w') as f:
    f.writelines(name + '\n' for name in names)
  for split, lines in lists.items():
    with open(os.path.join(out_dir, f'{split}.txt'), 'w') as f:
      f.writelines(lines)
  return out_dir


def prepare_synthetic(out_dir: str, *, seed: int = 0, num_classes: int = 12,
                      videos_per_class: int = 32, videos_per_shard: int = 16,
                      short_side: int | None = None, fps: float | None = None,
                      show_progress: bool = False) -> str:
  """Generates the dataset into ``out_dir/videos`` and prepares it (train and test) into
  ``out_dir/records`` through the normal preparation path; returns the records folder.

  Works in this process (small data: starting worker processes would cost more than it saves).
  Reruns skip the work already done (finished shards are kept).
  """
  # Imported here: the generator alone needs neither TensorFlow nor the preparation code.
  from input_pipeline import prepare
  from input_pipeline import sources
  from input_pipeline import video_decoding
  videos_dir = os.path.join(out_dir, 'videos')
  if not os.path.exists(os.path.join(videos_dir, 'test.txt')):
    generate(videos_dir, seed=seed, num_classes=num_classes, videos_per_class=videos_per_class,
             show_progress=show_progress)
  records_dir = os.path.join(out_dir, 'records')
  options = prepare.EncodingOptions(
      fps=fps, geometry=video_decoding.FrameGeometry(short_side=short_side), jpeg_quality=90,
      min_frames=prepare.DEFAULT_MIN_FRAMES, frames_fps=30.0)
  for split in ('train', 'test'):
    listing = sources.list_source('list', split=split, root=videos_dir)
    prepare.prepare_split(
        listing, out_dir=records_dir, split=split, options=options,
        videos_per_shard=videos_per_shard, num_shards=None, seed=seed,
        source_description={'source': 'list', 'root': videos_dir},
        show_progress=show_progress)
  return records_dir


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m input_pipeline.synthetic', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True, help='folder to write the videos and lists to')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_classes', type=int, default=12, help=f'2 to {MAX_CLASSES}')
  parser.add_argument('--videos_per_class', type=int, default=32)
  parser.add_argument('--test_fraction', type=float, default=0.25)
  args = parser.parse_args(argv)
  generate(args.out, seed=args.seed, num_classes=args.num_classes,
           videos_per_class=args.videos_per_class, test_fraction=args.test_fraction)
  print(f'Wrote {args.num_classes} classes x {args.videos_per_class} videos to {args.out}. '
        f'Prepare them with: python -m input_pipeline.prepare --source=list --root={args.out} '
        '--splits=train,test --out=RECORDS_DIR')


if __name__ == '__main__':
  main(sys.argv[1:])
