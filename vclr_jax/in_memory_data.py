"""A TensorFlow-free data source: generated videos held in memory, sampled as VCLR does.

Used where TensorFlow is absent or unwanted: the accelerator benchmarks, the train-step
tests, and ``config.data.source = 'in_memory'``. It follows the sampling of REFERENCE.md
(segments, two distinct frames per segment, anchor in the first or last segment, the four
shuffles), with clips as input_pipeline/vclr_sampling.py draws them (two disjoint clips of
``clip_length`` frames at ``clip_stride`` per segment), and yields per-host batches of uint8 frames in the layout of vclr_jax/batch.py;
the train step augments them on the device. Batch ``i`` depends only on (seed, i, host), so a resumed
run continues the same sequence.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from vclr_jax import batch as batch_layout


def make_videos(num_videos: int, num_frames: int, size: int | tuple[int, int],
                seed: int) -> np.ndarray:
  """(N, F, H, W, 3) uint8 videos (``size`` = H = W, or (H, W)): a smooth random texture per
  video that drifts over time.

  Each video is distinguishable by its texture, so instance discrimination has something
  to learn, and frames of one video differ by their drift, so temporal order is visible.
  """
  height, width = (size, size) if isinstance(size, int) else size
  size = max(height, width)
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (num_videos, 6, 6, 3)).astype(np.float32)
  grid = np.linspace(0, 5, 2 * size, dtype=np.float32)
  lo = np.floor(grid).astype(int).clip(0, 4)
  w = (grid - lo)[:, None]
  rows = coarse[:, lo] * (1 - w[None, :, None]) + coarse[:, lo + 1] * w[None, :, None]
  texture = rows[:, :, lo] * (1 - w[None, None, :]) + rows[:, :, lo + 1] * w[None, None, :]
  drift = rng.integers(1, max(2, size // num_frames + 1), (num_videos, 2))
  videos = np.empty((num_videos, num_frames, height, width, 3), np.uint8)
  for t in range(num_frames):
    for v in range(num_videos):
      dy, dx = (drift[v] * t) % size
      videos[v, t] = texture[v, dy:dy + height, dx:dx + width]
  return videos


def sample_frame_indices(num_frames: int, rng: np.random.Generator, clip_length: int = 1,
                         clip_stride: int = 1):
  """Key tuple, query tuple and the anchor segment (0 or 2).

  The tuples are (3,) frames, or (3, L) clip frames for ``clip_length`` L > 1, in temporal
  order; in each segment the key clip and the query clip share no frame. Positions are drawn
  as vclr_sampling.sample_vclr_indices does: two distinct among the n - 2p + 2 starts of a
  segment of n frames and clips of span p, the later one moved p - 1 frames on.
  """
  span = batch_layout.clip_span(clip_length, clip_stride)
  length = num_frames // batch_layout.NUM_SEGMENTS
  bounds = [0, length, 2 * length, num_frames]
  pairs = np.stack([bounds[s] + rng.choice(bounds[s + 1] - bounds[s] - 2 * span + 2, 2,
                                           replace=False)
                    for s in range(batch_layout.NUM_SEGMENTS)])
  pairs += (span - 1) * (pairs == pairs.max(axis=1, keepdims=True))
  anchor = 2 * int(rng.integers(2))
  if clip_length > 1:
    pairs = pairs[..., None] + clip_stride * np.arange(clip_length)
  return pairs[:, 0], pairs[:, 1], anchor


class InMemoryVideos:
  """Deterministic per-host VCLR batches from videos in memory."""

  def __init__(self, videos: np.ndarray, *, batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, clip_length: int = 1,
               clip_stride: int = 1):
    needed = batch_layout.min_video_frames(clip_length, clip_stride)
    if videos.shape[1] < needed:
      raise ValueError(f'Videos need at least {needed} frames for VCLR sampling with '
                       f'clip_length={clip_length} and clip_stride={clip_stride} (two disjoint '
                       f'clips per segment), got {videos.shape[1]}.')
    self.videos = videos
    self.clip_length = clip_length
    self.clip_stride = clip_stride
    self.batch_size = batch_size
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count

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
    key_idx, query_idx, anchor = sample_frame_indices(len(video), rng, self.clip_length,
                                                      self.clip_stride)
    shuffles = batch_layout.SHUFFLES
    query_perm = shuffles[rng.integers(4)] if rng.random() < 0.5 else batch_layout.IDENTITY
    key_perm = shuffles[rng.integers(4)] if rng.random() < 0.5 else batch_layout.IDENTITY
    return {
        'frames': video[np.concatenate([query_idx, key_idx])],
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
