"""Which frames one VCLR training example uses (REFERENCE.md, "One training example").

Pure index arithmetic with stateless random ops: no decoding here, so it can be tested on its
own and the reader decodes only the frames chosen.

Clips (the paper's Sec. 5, VCLR with 3D CNNs): with ``clip_length`` L > 1 each of the six
"frames" of an example becomes a clip of L frames ``start, start + s, ..., start + (L - 1) s``
(``clip_stride`` s), spanning (L - 1) s + 1 frames (batch.clip_span) that lie inside their
segment. The query clip and the key clip of a segment never overlap, so they share no frame.
L = 1 is the frame sampling of the 2D method, draw for draw.
"""

from __future__ import annotations

import tensorflow as tf

from input_pipeline.split_index import too_short_message
from vclr_jax import batch as batch_layout

NUM_SEGMENTS = batch_layout.NUM_SEGMENTS


def segment_bounds(num_frames):
  """Starts and lengths of [0, L), [L, 2L), [2L, F) with L = F // 3 (int32, shape (3,))."""
  length = num_frames // NUM_SEGMENTS
  starts = tf.stack([0, length, 2 * length])
  lengths = tf.stack([length, length, num_frames - 2 * length])
  return starts, lengths


def clip_frame_indices(starts, clip_length: int = 1, clip_stride: int = 1):
  """(..., L) frame indices of the clips beginning at ``starts`` (...,)."""
  return starts[..., None] + clip_stride * tf.range(clip_length, dtype=starts.dtype)


def sample_vclr_indices(num_frames, seed, clip_length: int = 1, clip_stride: int = 1):
  """Clip starts and labels of one example.

  Returns a dict of int32 tensors: ``key_indices`` and ``query_indices`` (3,) in temporal
  order, the first frame of each segment's key and query clip (the frame itself when
  ``clip_length`` is 1; clip_frame_indices gives every frame); in each segment the two clips
  are disjoint. ``anchor`` (0 or 2), ``query_perm`` / ``key_perm`` (3,) (identity or one of
  batch.SHUFFLES, each tuple by its own fair coin) and ``order_label`` = query shuffled +
  2 * key shuffled.

  A video shorter than ``batch.min_video_frames(clip_length, clip_stride)`` (6 for frames) has a segment
  too short for two disjoint clips: the sampler does not repeat or overlap frames then but
  fails with too_short_message (the reader checks every video before reading, so this
  assertion guards direct callers).
  """
  num_frames = tf.cast(num_frames, tf.int32)
  tf.debugging.assert_greater_equal(num_frames,
                                    batch_layout.min_video_frames(clip_length, clip_stride),
                                    message=too_short_message(clip_length, clip_stride))
  pick_seed, anchor_seed, coin_seed, shuffle_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  starts, lengths = segment_bounds(num_frames)
  # Two disjoint clips of span p in a segment of n frames: two distinct positions among the
  # n - 2p + 2 possible, the later one then moved p - 1 frames on (for p = 1, two distinct
  # frames). The first position is uniform, the second uniform over the others (shifted past
  # the first), i.e. a draw without replacement.
  span = batch_layout.clip_span(clip_length, clip_stride)
  positions = lengths - 2 * span + 2
  u = tf.random.stateless_uniform([2, NUM_SEGMENTS], seed=pick_seed)
  first = tf.cast(u[0] * tf.cast(positions, tf.float32), tf.int32)
  second = tf.cast(u[1] * tf.cast(positions - 1, tf.float32), tf.int32)
  second += tf.cast(second >= first, tf.int32)
  first, second = tf.minimum(first, positions - 1), tf.minimum(second, positions - 1)
  first_later = tf.cast(first > second, tf.int32)
  first += (span - 1) * first_later
  second += (span - 1) * (1 - first_later)

  anchor = 2 * tf.random.stateless_uniform([], seed=anchor_seed, maxval=2, dtype=tf.int32)
  shuffled = tf.random.stateless_uniform([2], seed=coin_seed, maxval=2, dtype=tf.int32)
  choice = tf.random.stateless_uniform([2], seed=shuffle_seed, maxval=len(batch_layout.SHUFFLES),
                                       dtype=tf.int32)
  shuffles = tf.gather(tf.constant(batch_layout.SHUFFLES), choice)
  identity = tf.constant(batch_layout.IDENTITY)
  perms = tf.where(tf.cast(shuffled[:, None], tf.bool), shuffles, identity[None])
  return {
      'key_indices': starts + first,
      'query_indices': starts + second,
      'anchor': anchor,
      'query_perm': perms[0],
      'key_perm': perms[1],
      'order_label': shuffled[0] + 2 * shuffled[1],
  }
