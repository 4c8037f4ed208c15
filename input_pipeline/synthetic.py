r"""A small synthetic action dataset of real H.264 videos, for demos, tests and benchmarks.

  python -m input_pipeline.synthetic --out=data/synthetic [--seed=0 --videos_per_class=32]

Every video plays a script of two *phases*, one after the other, in random order and with a
random switch point. A phase is a moving pattern (bouncing balls, falling rain streaks,
diagonal stripes, horizontal bars, a sliding checkerboard, spreading rings). A class is an
unordered pair of phases and every phase is shared by several classes: one frame or a short
clip is ambiguous, only the whole video tells the class (the paper's global-context argument),
while the mean of per-frame features over the video still separates the classes (a supervised
TSN learns them).

What a video keeps, what changes, and why (what makes real videos work for VCLR). The default
variant, ``wide_stage``, is the demo's and docs/evidence.md's:
- Identity: a still scene. The background is the video's *wallpaper*, one small shape
  repeated over the frame on a slanted lattice (its shape, period, slant and two colours drawn
  per video), with two to four static *scenery* shapes; the phases play on a *stage*, a plain
  floor in the wallpaper's ground colour covering 55-75% of the frame, squeezed onto it (drawn
  in the stage's own coordinates), so every frame shows its phase whole. As in a real video,
  the place stays while the action changes, so frames of different segments share the scene,
  the floor and the colours, and the frame-level and video-level contrastive terms have
  something to match.
- The scene hints at the class, as a pool hints at swimming: 80% of the videos of a class stand
  in its *home*, a wallpaper shape and a ground hue of its own (one of 8 shapes, one of 15
  hues), the others in any. One frame narrows the class down; the whole video names it.
- Time's direction: *snow*. Small white discs spread over the whole frame appear one after
  another and stay: the share of the frame they cover grows steadily from nothing at the start
  to about a quarter at the end. White is in every video and in no other layer (the bright
  colours stop short of it), so a random crop of any size or a flip keeps that share, and one
  augmented frame shows roughly where it lies in the video, whatever the video: the order term
  can learn.
- Per video, besides: every colour, moved a little by each frame; the patterns' sizes,
  positions, periods and speeds, the switch point, the frame rate, the length (some videos last
  under a second) and the resolution.
Everything follows from the seed.

Other variants (``--variant``) draw the same phases, timing and size for a video of the same
name:
- ``scenes``: the demo's earlier videos: the stage is 20-30% of the frame and shows the
  wallpaper under a part of the phases, which are drawn over the whole frame (so it often shows
  nothing of a ball); half the videos of a class stand in its home.
- ``actions``: the 3D demo's videos: the phases cover the frame over a
  smooth background that blends three colours of one luma, and the grains take the scenery's
  colour. Only the colours hold a video together, so the contrastive terms need many more steps.
- ``staged``: a control, ``scenes`` without its homes and
  snow: the stage covers 35-50% of the frame and the grains take the scenery's colour.
- ``stills``: a control: every frame is the actions video's middle frame, so the frames of
  different segments are one image (time's direction and the class's second phase are gone).

Written in the ``list`` source layout (``classes.txt``, ``train.txt``, ``test.txt``,
``<class>/<video>.mp4``), with the generator's settings last (``generator.json``: a folder
without it is unfinished or older), and prepared like any real dataset::

  python -m input_pipeline.prepare --source=list --root=data/synthetic --splits=train,test \
      --out=data/synthetic_records
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
from typing import Callable, Sequence

import av
import numpy as np
import tqdm

PHASES = ('ball', 'rain', 'stripes', 'bars', 'checker', 'rings')
MAX_CLASSES = len(PHASES) * (len(PHASES) - 1) // 2
# (width, height); yuv420p needs even sizes.
RESOLUTIONS = ((128, 96), (160, 120), (112, 112), (144, 108), (96, 128))
FRAME_RATES = (12, 15, 24)
DURATION_RANGE_S = (0.6, 2.5)
# What the videos show: 'actions' (the 3D demo's), 'staged' (a wallpaper identity, the phases
# on a stage), 'stills' (every frame the middle frame of the actions video), 'scenes' and
# 'wide_stage' (scenes with the action on most of the frame): docs/data.md, section 5.
VARIANTS = ('actions', 'staged', 'stills', 'scenes', 'wide_stage')
DEFAULT_VARIANT = 'wide_stage'
GENERATOR_FILE = 'generator.json'
DEFAULT_TEST_FRACTION = 0.25
# The actions' background: a grid of colours drawn from the video's palette, smoothly
# interpolated over the frame; fine enough that a crop of a fifth of the frame shows most of
# the palette. The palette's lumas stay this close to the video's mid luma.
BACKGROUND_GRID = (6, 8)
BACKGROUND_PALETTE = 3
BACKGROUND_LUMA_SPREAD = 15.0
# The staged videos' background: a wallpaper, one small shape repeated on a slanted lattice
# over the whole frame in two colours of the video's own, so any crop shows it many times;
# its shape, period, fill and slant are drawn per video, an identity that a colour change, a
# grey crop or a rescaled crop keeps. The two colours' lumas lie this far on either side of
# the video's mid luma.
WALLPAPER_SHAPES = ('disc', 'square', 'diamond', 'ring', 'plus', 'cross', 'triangle', 'bar')
WALLPAPER_PERIOD = (0.08, 0.15)  # of the short side
WALLPAPER_FILL = (0.5, 0.85)  # the shape's size, of the period
WALLPAPER_LUMA_SPREAD = 25.0
# The staged videos' phases play on a *stage*, a rectangle of this share of the frame at a
# place of the video's own; the rest of the frame keeps the still scenery, as a real video's
# scene stays while its action changes.
STAGE_AREA = (0.35, 0.5)
SCENES_STAGE_AREA = (0.2, 0.3)
# The wide_stage variant's stage: most of the frame, a plain floor, and its phases drawn in the
# stage's own coordinates (squeezed onto it), so every frame shows the action whole.
WIDE_STAGE_AREA = (0.55, 0.75)
# In the scenes (wide_stage) variant a video's wallpaper is its class's *home* this often, else
# any: the home is a shape and a ground hue (MAX_CLASSES hues around the colour circle), so a
# frame's scenery hints at the class, as a pool hints at swimming. An at-home ground's hue is
# within HUE_JITTER (rad) of the home's; the wallpaper's other colour is any.
HOME_SHARE = 0.5
WIDE_HOME_SHARE = 0.8
HUE_JITTER = 0.2
# The phases' colour and the scenery's differ from every background luma at least this much.
MIN_LUMA_CONTRAST = 60.0
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
REJECTION_BLOCK = 4096
REJECTION_BLOCKS = 1000
# Every frame moves the video's colours by this much (standard deviation per channel).
COLOUR_WOBBLE = 6.0
# The grains: their radius as a share of the frame's short side, and about the share of the
# frame they cover once all have appeared (overlaps make it a little less).
GRAIN_RADIUS = 0.035
SNOW_LUMA = 255.0  # the scenes and wide_stage variants' grains: white
GRAIN_COVERAGE = 0.3

Canvas = np.ndarray  # (H, W, 3) float32 in [0, 255], drawn on in place.
Drawer = Callable[[Canvas, float, np.ndarray, np.ndarray, np.ndarray], None]


def class_names(num_classes: int) -> list[str]:
  if not 2 <= num_classes <= MAX_CLASSES:
    raise ValueError(f'num_classes must be in [2, {MAX_CLASSES}], got {num_classes}.')
  return ['-'.join(pair) for pair in itertools.combinations(PHASES, 2)][:num_classes]


def _triangle_wave(x):
  """Position in [0, 1] of something bouncing between two walls after travelling x."""
  x = x % 2.0
  return np.where(x < 1.0, x, 2.0 - x)


def _make_phase(name: str, rng: np.random.Generator, height: int, width: int) -> Drawer:
  """Draws the named phase at progress t in [0, 1] in the given colour, with its geometry and
  motion drawn once per video. Every phase is a pattern that covers much of the frame, so that
  a random crop of a fifth of it still shows which phase is playing."""
  size = min(height, width)
  if name == 'ball':  # one to three big balls bouncing off the walls
    count = int(rng.integers(1, 4))
    radius = rng.uniform(0.14, 0.24, count) * size
    start = rng.uniform(0, 1, (count, 2))
    speed = rng.uniform(0.8, 2.5, (count, 2)) * rng.choice([-1, 1], (count, 2))

    def draw(canvas, t, yy, xx, colour):
      for r, (sx, sy), (vx, vy) in zip(radius, start, speed):
        cx = r + _triangle_wave(sx + vx * t) * (width - 2 * r)
        cy = r + _triangle_wave(sy + vy * t) * (height - 2 * r)
        canvas[(xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2] = colour
  elif name == 'rain':  # thin vertical streaks falling
    count = int(rng.integers(10, 20))
    columns, offsets = rng.uniform(0, width, count), rng.uniform(0, 1, count)
    speeds = rng.uniform(1, 3, count)
    half_width, length = rng.uniform(0.012, 0.022) * size, rng.uniform(0.15, 0.3) * size

    def draw(canvas, t, yy, xx, colour):
      for column, offset, speed in zip(columns, offsets, speeds):
        top = ((offset + speed * t) % 1.0) * (height + length) - length
        canvas[(np.abs(xx - column) <= half_width) & (yy >= top) & (yy < top + length)] = colour
  elif name in ('stripes', 'bars'):  # diagonal stripes, or horizontal bars, scrolling
    angle = (rng.uniform(np.pi / 6, np.pi / 3) * rng.choice([-1, 1]) if name == 'stripes'
             else np.pi / 2)
    period = rng.uniform(0.18, 0.3) * size
    travel = rng.uniform(1, 3) * period * rng.choice([-1, 1])

    def draw(canvas, t, yy, xx, colour):
      along = np.cos(angle) * xx + np.sin(angle) * yy + travel * t
      canvas[(along % period) < period / 2] = colour
  elif name == 'checker':  # a checkerboard sliding diagonally
    cell = rng.uniform(0.1, 0.2) * size
    velocity = rng.uniform(1, 3, 2) * cell * rng.choice([-1, 1], 2)

    def draw(canvas, t, yy, xx, colour):
      parity = np.floor((xx + velocity[0] * t) / cell) + np.floor((yy + velocity[1] * t) / cell)
      canvas[parity % 2 == 0] = colour
  elif name == 'rings':  # concentric rings spreading out from a point
    centre = rng.uniform(0.2, 0.8, 2) * (width, height)
    period = rng.uniform(0.12, 0.22) * size
    travel = rng.uniform(1, 3) * period

    def draw(canvas, t, yy, xx, colour):
      radius = np.sqrt((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2)
      canvas[((radius - travel * t) % period) < period / 2] = colour
  else:
    raise ValueError(f'Unknown phase {name!r}; phases are {PHASES}.')
  return draw


def _colour_of_luma(rng: np.random.Generator, luma: float) -> np.ndarray:
  """A random colour (3,) of about the given luma (BT.601), any hue.

  Draws colours until one shifted to that luma fits in [0, 255], a block of draws at a time,
  and leaves the generator where drawing one at a time would, so the videos stay those of
  earlier versions byte for byte. Near black or white a fit takes millions of draws, and exactly
  at them none fits: after REJECTION_BLOCKS blocks, the grey of that luma plus a random chroma
  that fits.
  """
  for _ in range(REJECTION_BLOCKS):
    start = rng.bit_generator.state
    colours = rng.uniform(0, 255, (REJECTION_BLOCK, 3))
    colours += (luma - colours @ _LUMA)[:, None]  # the weights sum to 1
    fits = np.flatnonzero((colours.min(axis=1) >= 0) & (colours.max(axis=1) <= 255))
    if fits.size:
      rng.bit_generator.state = start
      rng.uniform(0, 255, (fits[0] + 1, 3))  # the draws up to the first fit, no more
      return colours[fits[0]].astype(np.float32)
  chroma = rng.normal(size=3)
  chroma -= float(_LUMA @ chroma)  # now of zero luma
  with np.errstate(divide='ignore'):
    room = np.where(chroma > 0, (255 - luma) / chroma, -luma / chroma)
  return (luma + rng.uniform(0, 1) * room.min() * chroma).astype(np.float32)


def _colour_of_luma_and_hue(rng: np.random.Generator, luma: float, hue: float) -> np.ndarray:
  """A colour (3,) of the given luma and hue (the angle of its (Cb, Cr) chroma, BT.601), its
  saturation drawn between half and all of what fits in [0, 255]."""
  direction = np.array([np.cos(hue), np.sin(hue)])
  chroma_to_rgb = np.array([[0.0, 1.402], [-0.344136, -0.714136], [1.772, 0.0]])
  step = chroma_to_rgb @ direction  # of zero luma
  with np.errstate(divide='ignore'):
    room = np.where(step > 0, (255 - luma) / step, np.where(step < 0, -luma / step, np.inf))
  return (luma + rng.uniform(0.5, 1.0) * room.min() * step).astype(np.float32)


def _scene_style(rng: np.random.Generator, home: int, home_share: float = HOME_SHARE
                 ) -> tuple[int, float]:
  """(wallpaper shape, hue) of a scenes video of class ``home`` (its index among all
  MAX_CLASSES pairs): the class's home with probability ``home_share``, else any."""
  if rng.uniform() < home_share:
    return (home % len(WALLPAPER_SHAPES),
            2 * np.pi * home / MAX_CLASSES + rng.uniform(-HUE_JITTER, HUE_JITTER))
  return int(rng.integers(len(WALLPAPER_SHAPES))), rng.uniform(0, 2 * np.pi)


def _video_colours(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, wallpaper: bool,
                   home: int | None = None, home_share: float = HOME_SHARE,
                   brightest: float = 255.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The video's colours: a background (H, W, 3); its plainest colour, the *ground* (3,) (the
  wallpaper's ground, or the palette's first colour); the phases' colour; and the colour of
  the scenery and the grains. The background is a smooth field of the video's palette (a few
  colours of about the same mid luma) or, with ``wallpaper``, the video's wallpaper in two
  colours WALLPAPER_LUMA_SPREAD on either side of the mid luma. The phases' and the scenery's
  colours lie at opposite ends of the luma range, each at least MIN_LUMA_CONTRAST away from
  every background colour, so the layers stay apart in grayscale too (MoCo v2's augmentation
  turns 20% of the crops grey). With a class ``home`` (scenes and wide_stage variants, see
  _scene_style), the wallpaper's shape and its ground's hue are the class's home with
  probability ``home_share``."""
  mid = rng.uniform(100, 155)
  if wallpaper:
    spread = WALLPAPER_LUMA_SPREAD
    shape, hue = (None, None) if home is None else _scene_style(rng, home, home_share)
    ground_luma, figure_luma = mid + spread * rng.permutation([-1.0, 1.0])
    ground = (_colour_of_luma(rng, ground_luma) if hue is None else
              _colour_of_luma_and_hue(rng, ground_luma, hue))
    figure = _colour_of_luma(rng, figure_luma)
    background = np.where(_make_wallpaper(rng, yy, xx, shape)[..., None], figure, ground
                          ).astype(np.float32)
  else:
    spread = BACKGROUND_LUMA_SPREAD
    palette = np.stack([_colour_of_luma(rng, mid + rng.uniform(-spread, spread))
                        for _ in range(BACKGROUND_PALETTE)])
    coarse = palette[rng.integers(0, BACKGROUND_PALETTE, BACKGROUND_GRID)]
    background = _upsample(coarse, *yy.shape)
    ground = palette[0]
  lowest_bright = min(mid + spread + MIN_LUMA_CONTRAST, brightest)
  bright = _colour_of_luma(rng, rng.uniform(lowest_bright, brightest))
  dark = _colour_of_luma(rng, rng.uniform(0, mid - spread - MIN_LUMA_CONTRAST))
  return ((background, ground, bright, dark) if rng.integers(2) else
          (background, ground, dark, bright))


def _make_wallpaper(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
                    shape: int | None = None) -> np.ndarray:
  """Mask (H, W) of one of WALLPAPER_SHAPES (``shape``, an index, or one drawn) repeated on a
  slanted lattice (every other row shifted by half a period, or not), its period, fill and
  slant drawn for the video."""
  shape = WALLPAPER_SHAPES[int(rng.integers(len(WALLPAPER_SHAPES))) if shape is None else shape]
  period = rng.uniform(*WALLPAPER_PERIOD) * min(yy.shape)
  half = rng.uniform(*WALLPAPER_FILL) * period / 2
  slant = rng.uniform(0, np.pi / 2)
  shift = rng.integers(2) / 2
  along = np.cos(slant) * xx + np.sin(slant) * yy
  across = -np.sin(slant) * xx + np.cos(slant) * yy
  # Coordinates in the lattice cell, centred on its shape.
  u = (along / period + shift * np.floor(across / period)) % 1.0 * period - period / 2
  v = (across / period) % 1.0 * period - period / 2
  thin = half / 3
  if shape == 'disc':
    return u ** 2 + v ** 2 <= half ** 2
  if shape == 'square':
    return np.maximum(np.abs(u), np.abs(v)) <= half * 0.85
  if shape == 'diamond':
    return np.abs(u) + np.abs(v) <= half * 1.2
  if shape == 'ring':
    return ((half - thin) ** 2 <= u ** 2 + v ** 2) & (u ** 2 + v ** 2 <= half ** 2)
  if shape == 'triangle':
    return (np.abs(v) <= half) & (np.abs(u) <= (v + half) / 2)
  if shape == 'cross':  # a plus turned by 45 degrees
    u, v = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
  arm_u = (np.abs(v) <= thin / 2) & (np.abs(u) <= half)
  if shape == 'bar':
    return arm_u
  return arm_u | ((np.abs(u) <= thin / 2) & (np.abs(v) <= half))  # plus, cross


def _make_stage(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
                area_share: tuple[float, float] = STAGE_AREA) -> np.ndarray:
  """Mask (H, W) of the rectangle the staged videos' phases play on: a share of the frame
  drawn in ``area_share``, its aspect ratio within a factor 1.3 of the frame's, at a random
  place."""
  height, width = yy.shape
  area = rng.uniform(*area_share) * height * width
  aspect = width / height * np.exp(rng.uniform(-np.log(1.3), np.log(1.3)))
  stage_width = min(width, np.sqrt(area * aspect))
  stage_height = min(height, area / stage_width)
  left, top = rng.uniform(0, width - stage_width), rng.uniform(0, height - stage_height)
  return (xx >= left) & (xx < left + stage_width) & (yy >= top) & (yy < top + stage_height)


def _upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear interpolation of a (h, w, 3) grid of colours onto (height, width, 3)."""
  def weights(count, size):
    position = np.linspace(0, count - 1, size)
    low = np.minimum(np.floor(position).astype(int), count - 2)
    return low, (position - low)[:, None]
  rows, row_weight = weights(coarse.shape[0], height)
  columns, column_weight = weights(coarse.shape[1], width)
  by_row = coarse[rows] * (1 - row_weight[..., None]) + coarse[rows + 1] * row_weight[..., None]
  return (by_row[:, columns] * (1 - column_weight) + by_row[:, columns + 1] * column_weight
          ).astype(np.float32)


def _make_scene(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """The video's scenery: a mask (H, W) of two to four static shapes (discs, squares,
  triangles) that every frame shows, whatever phase plays."""
  height, width = yy.shape
  size = min(height, width)
  mask = np.zeros((height, width), bool)
  for _ in range(int(rng.integers(2, 5))):
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    r = rng.uniform(0.08, 0.16) * size
    kind = rng.integers(3)
    if kind == 0:
      mask |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
    elif kind == 1:
      mask |= (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    else:  # an isosceles triangle pointing up or down
      tip = rng.choice([-1.0, 1.0])
      depth = (yy - cy) * tip + r  # 0 at the base, 2r at the tip
      mask |= (depth >= 0) & (depth <= 2 * r) & (np.abs(xx - cx) <= (2 * r - depth) / 2)
  return mask


def _make_grains(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """When each pixel joins the grains ((H, W), a position in the video in [0, 1], or infinity
  for pixels no grain covers): small discs spread over the frame, appearing one after another at
  evenly spaced times, in random order."""
  height, width = yy.shape
  radius = GRAIN_RADIUS * min(height, width)
  count = max(1, int(round(GRAIN_COVERAGE * height * width / (np.pi * radius ** 2))))
  appears = rng.permutation(np.arange(count) + rng.uniform(0, 1, count)) / count
  centres = rng.uniform(0, 1, (count, 2)) * (width, height)
  joins = np.full((height, width), np.inf, np.float32)
  for (cx, cy), time in zip(centres, appears):
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
    joins[disc] = np.minimum(joins[disc], time)
  return joins


def render_video(phases: tuple[str, str], rng: np.random.Generator, variant: str = DEFAULT_VARIANT
                 ) -> tuple[np.ndarray, int, np.ndarray]:
  """One video playing the two ``phases`` one after the other, in random order: its frames
  (T, H, W, 3) uint8, its frame rate, and which phase plays in each frame ((T,) indices into
  ``phases``). ``variant`` is one of VARIANTS (the module's docstring says what each shows);
  every variant draws the same phases, timing and size from the same ``rng``."""
  if variant not in VARIANTS:
    raise ValueError(f'Unknown synthetic video variant {variant!r}; variants are {VARIANTS}.')
  width, height = RESOLUTIONS[rng.integers(len(RESOLUTIONS))]
  fps = int(FRAME_RATES[rng.integers(len(FRAME_RATES))])
  num_frames = max(6, int(round(rng.uniform(*DURATION_RANGE_S) * fps)))
  order = rng.permutation(len(phases))
  drawers = [_make_phase(phases[i], rng, height, width) for i in order]
  # Each phase gets between 35% and 65% of the video.
  bounds = np.array([0.0, rng.uniform(0.35, 0.65), 1.0])
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  wide = variant == 'wide_stage'
  scenes = wide or variant == 'scenes'  # homes and snow
  staged = scenes or variant == 'staged'
  # A class is an unordered pair: its index among all pairs, whichever order they come in.
  home = (class_names(MAX_CLASSES).index('-'.join(sorted(phases, key=PHASES.index)))
          if scenes else None)
  background, ground, colour, marks_colour = _video_colours(
      rng, yy, xx, wallpaper=staged, home=home,
      home_share=WIDE_HOME_SHARE if wide else HOME_SHARE,
      brightest=SNOW_LUMA - MIN_LUMA_CONTRAST / 2 if scenes else 255.0)
  phase_yy, phase_xx = yy, xx
  if staged:
    stage = _make_stage(rng, yy, xx, WIDE_STAGE_AREA if wide else
                        SCENES_STAGE_AREA if scenes else STAGE_AREA)
    scene = _make_scene(rng, yy, xx) & ~stage
    if wide:  # the phases squeezed onto the stage
      rows, columns = np.flatnonzero(stage.any(axis=1)), np.flatnonzero(stage.any(axis=0))
      phase_yy = (yy - rows[0]) * (height / rows.size)
      phase_xx = (xx - columns[0]) * (width / columns.size)
  else:
    scene = _make_scene(rng, yy, xx)
  grains_join = _make_grains(rng, yy, xx)
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  playing = np.empty(num_frames, np.int32)
  for index in range(num_frames):
    position = (index + 0.5) / num_frames
    phase = int(position >= bounds[1])
    progress = (position - bounds[phase]) / (bounds[phase + 1] - bounds[phase])
    wobble = rng.normal(0, COLOUR_WOBBLE, (3, 3))
    canvas = background + wobble[0]
    canvas[scene] = marks_colour + wobble[1]
    if staged:
      # The wide stage is a plain floor in the ground's colour: the action stands out whole.
      played = np.broadcast_to(ground + wobble[0], canvas.shape).copy() if wide else canvas.copy()
      drawers[phase](played, progress, phase_yy, phase_xx, colour + wobble[2])
      canvas[stage] = played[stage]
    else:
      drawers[phase](canvas, progress, yy, xx, colour + wobble[2])
    # The scenes and wide_stage variants' grains are snow: white in every video, a colour no
    # other layer has, so its share of any crop tells the time and says nothing of the video.
    canvas[grains_join <= position] = SNOW_LUMA if scenes else marks_colour + wobble[1]
    frames[index] = np.clip(canvas, 0, 255).astype(np.uint8)
    playing[index] = order[phase]
  if variant == 'stills':
    middle = num_frames // 2
    frames[:], playing[:] = frames[middle], playing[middle]
  return frames, fps, playing


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
             test_fraction: float = DEFAULT_TEST_FRACTION, variant: str = DEFAULT_VARIANT,
             show_progress: bool = True
             ) -> str:
  """Writes the dataset under ``out_dir`` (list layout) and returns ``out_dir``. Every variant
  draws its videos from the same generators (one per video), so a staged or still video has
  the phases, timing and size of the actions video of the same name."""
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
    frames, fps, _ = render_video(tuple(names[label].split('-')), rng, variant)
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
  with open(os.path.join(out_dir, GENERATOR_FILE), 'w') as f:
    json.dump(_settings(seed, num_classes, videos_per_class, test_fraction, variant), f)
  return out_dir


def _settings(seed, num_classes, videos_per_class, test_fraction, variant) -> dict:
  return {'seed': seed, 'num_classes': num_classes, 'videos_per_class': videos_per_class,
          'test_fraction': test_fraction, 'variant': variant}


def generated_settings(out_dir: str) -> dict | None:
  """The settings a finished ``generate`` wrote to ``out_dir``, or None."""
  try:
    with open(os.path.join(out_dir, GENERATOR_FILE)) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def prepare_synthetic(out_dir: str, *, seed: int = 0, num_classes: int = 12,
                      videos_per_class: int = 32, videos_per_shard: int = 16,
                      short_side: int | None = None, fps: float | None = None,
                      variant: str = DEFAULT_VARIANT, show_progress: bool = False) -> str:
  """Generates the dataset into ``out_dir/videos`` and prepares it (train and test) into
  ``out_dir/records`` through the normal preparation path; returns the records folder.

  Works in this process (small data: starting worker processes would cost more than it saves).
  Reruns skip the work already done (finished shards are kept). A folder that holds a dataset
  of other settings (an earlier variant, say) is an error: its records would be kept.
  """
  # Imported here: the generator alone needs neither TensorFlow nor the preparation code.
  from input_pipeline import prepare
  from input_pipeline import sources
  from input_pipeline import video_decoding
  videos_dir = os.path.join(out_dir, 'videos')
  wanted = _settings(seed, num_classes, videos_per_class, DEFAULT_TEST_FRACTION, variant)
  found = generated_settings(videos_dir)
  if found not in (None, wanted):
    raise ValueError(f'{videos_dir} holds a synthetic dataset made with {found}, not {wanted}: '
                     f'delete {out_dir} or prepare into another folder.')
  records_dir = os.path.join(out_dir, 'records')
  if found is None:
    # Records beside unfinished or unlabelled videos cannot be trusted to be theirs.
    shutil.rmtree(records_dir, ignore_errors=True)
    generate(videos_dir, seed=seed, num_classes=num_classes, videos_per_class=videos_per_class,
             variant=variant, show_progress=show_progress)
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
  parser.add_argument('--test_fraction', type=float, default=DEFAULT_TEST_FRACTION)
  parser.add_argument('--variant', choices=VARIANTS, default=DEFAULT_VARIANT,
                      help="'wide_stage': the demo's videos (a still scene that hints at the "
                      "class, the phases on a stage of most of the frame, white grains that tell "
                      "the time); 'scenes': the same with a small stage; 'actions': the 3D "
                      "demo's videos; 'staged' and 'stills': controls for the contrastive terms "
                      '(docs/data.md, section 5)')
  args = parser.parse_args(argv)
  generate(args.out, seed=args.seed, num_classes=args.num_classes,
           videos_per_class=args.videos_per_class, test_fraction=args.test_fraction,
           variant=args.variant)
  print(f'Wrote {args.num_classes} classes x {args.videos_per_class} videos to {args.out}. '
        f'Prepare them with: python -m input_pipeline.prepare --source=list --root={args.out} '
        '--splits=train,test --out=RECORDS_DIR')


if __name__ == '__main__':
  from vclr_jax import cli_errors
  cli_errors.guard(main, sys.argv[1:])
