"""A TensorFlow-free data source: generated videos held in memory, sampled as VCLR does.

Used where TensorFlow is absent or unwanted: the accelerator benchmarks, the train-step
tests, and ``config.data.source = 'in_memory'``. It follows the sampling of REFERENCE.md
(segments, two distinct frames per segment, anchor in the first or last segment, the four
shuffles) with a light augmentation (random crop and flip), and yields per-host batches in
the layout of vclr_jax/batch.py. Batch ``i`` depends only on (seed, i, host), so a resumed
run continues the same sequence.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from vclr_jax import batch as batch_layout

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def make_videos(num_videos: int, num_frames: int, size: int, seed: int) -> np.ndarray:
  """(N, F, size, size, 3) uint8 videos: a smooth random texture per video that drifts over time.

  Each video is distinguishable by its texture, so instance discrimination has something
  to learn, and frames of one video differ by their drift, so temporal order is visible.
  """
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (num_videos, 6, 6, 3)).astype(np.float32)
  grid = np.linspace(0, 5, 2 * size, dtype=np.float32)
  lo = np.floor(grid).astype(int).clip(0, 4)
  w = (grid - lo)[:, None]
  rows = coarse[:, lo] * (1 - w[None, :, None]) + coarse[:, lo + 1] * w[None, :, None]
  texture = rows[:, :, lo] * (1 - w[None, None, :]) + rows[:, :, lo + 1] * w[None, None, :]
  drift = rng.integers(1, max(2, size // num_frames + 1), (num_videos, 2))
  videos = np.empty((num_videos, num_frames, size, size, 3), np.uint8)
  for t in range(num_frames):
    for v in range(num_videos):
      dy, dx = (drift[v] * t) % size
      videos[v, t] = texture[v, dy:dy + size, dx:dx + size]
  return videos


def sample_frame_indices(num_frames: int, rng: np.random.Generator):
  """Key tuple, query tuple (3 frames each, temporal order) and the anchor segment (0 or 2)."""
  length = num_frames // batch_layout.NUM_SEGMENTS
  bounds = [0, length, 2 * length, num_frames]
  pairs = np.stack([rng.choice(np.arange(bounds[s], bounds[s + 1]), 2, replace=False)
                    for s in range(batch_layout.NUM_SEGMENTS)])
  anchor = 2 * int(rng.integers(2))
  return pairs[:, 0], pairs[:, 1], anchor


class InMemoryVideos:
  """Deterministic per-host VCLR batches from videos in memory."""

  def __init__(self, videos: np.ndarray, *, batch_size: int, image_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if videos.shape[1] < 2 * batch_layout.NUM_SEGMENTS:
      raise ValueError(f'Videos need at least 6 frames for VCLR sampling, got {videos.shape[1]}.')
    self.videos = videos
    self.batch_size = batch_size
    self.image_size = image_size
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count

  def _crop(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random square crop of 40-100% of the side, nearest-neighbour resize, flip, normalise."""
    size = frame.shape[0]
    side = int(rng.uniform(0.4, 1.0) * size)
    top, left = rng.integers(0, size - side + 1, 2)
    index = top + (np.arange(self.image_size) * side) // self.image_size
    cols = left + (np.arange(self.image_size) * side) // self.image_size
    out = frame[index][:, cols]
    if rng.random() < 0.5:
      out = out[:, ::-1]
    return (out.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The host's batch number ``step``: epoch-wise shuffled videos, one example each."""
    global_batch = self.batch_size * self.process_count
    num_videos = len(self.videos)
    first = step * global_batch + self.process_index * self.batch_size
    examples = []
    for position in range(first, first + self.batch_size):
      epoch, offset = divmod(position, num_videos)
      order = np.random.default_rng([self.seed, epoch]).permutation(num_videos)
      rng = np.random.default_rng([self.seed, epoch, offset, 1])
      examples.append(self._example(self.videos[order[offset]], rng))
    return {name: np.stack([e[name] for e in examples]) for name in examples[0]}

  def _example(self, video: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    key_idx, query_idx, anchor = sample_frame_indices(len(video), rng)
    shuffles = batch_layout.SHUFFLES
    query_perm = shuffles[rng.integers(4)] if rng.random() < 0.5 else batch_layout.IDENTITY
    key_perm = shuffles[rng.integers(4)] if rng.random() < 0.5 else batch_layout.IDENTITY
    return {
        'query_frames': np.stack([self._crop(video[i], rng) for i in query_idx]),
        'key_frames': np.stack([self._crop(video[i], rng) for i in key_idx]),
        'x1': self._crop(video[query_idx[anchor]], rng),
        'anchor': np.int32(anchor),
        'query_perm': query_perm,
        'key_perm': key_perm,
        'order_label': batch_layout.order_label(query_perm, key_perm),
    }

  def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    step = start_step
    while True:
      yield self.batch(step)
      step += 1
