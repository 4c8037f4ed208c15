"""Which frames one VCLR training example uses (REFERENCE.md, "One training example").

Pure index arithmetic with stateless random ops: no decoding here, so it can be tested on its
own and the reader decodes only the six frames chosen.
"""

from __future__ import annotations

import tensorflow as tf

from vclr_jax import batch as batch_layout

NUM_SEGMENTS = batch_layout.NUM_SEGMENTS
MIN_FRAMES = 2 * NUM_SEGMENTS  # Two distinct frames per segment.


def segment_bounds(num_frames):
  """Starts and lengths of [0, L), [L, 2L), [2L, F) with L = F // 3 (int32, shape (3,))."""
  length = num_frames // NUM_SEGMENTS
  starts = tf.stack([0, length, 2 * length])
  lengths = tf.stack([length, length, num_frames - 2 * length])
  return starts, lengths


def sample_vclr_indices(num_frames, seed):
  """Frame indices and labels of one example.

  Returns a dict of int32 tensors: ``key_indices`` and ``query_indices`` (3,) in temporal
  order (one frame per segment, the two tuples never share a frame), ``anchor`` (0 or 2),
  ``query_perm`` / ``key_perm`` (3,) (identity or one of batch.SHUFFLES, each tuple by its own
  fair coin) and ``order_label`` = query shuffled + 2 * key shuffled. ``num_frames`` must be at
  least 6 (preparation's default --min_frames guarantees it).
  """
  num_frames = tf.cast(num_frames, tf.int32)
  tf.debugging.assert_greater_equal(
      num_frames, MIN_FRAMES, message='VCLR needs 6 frames per video; prepare with --min_frames=6')
  pick_seed, anchor_seed, coin_seed, shuffle_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  starts, lengths = segment_bounds(num_frames)
  # Two distinct frames of a segment of n: the first uniform in [0, n), the second uniform
  # over the n - 1 others (shifted past the first), i.e. a draw without replacement.
  u = tf.random.stateless_uniform([2, NUM_SEGMENTS], seed=pick_seed)
  first = tf.cast(u[0] * tf.cast(lengths, tf.float32), tf.int32)
  second = tf.cast(u[1] * tf.cast(lengths - 1, tf.float32), tf.int32)
  second += tf.cast(second >= first, tf.int32)
  first, second = tf.minimum(first, lengths - 1), tf.minimum(second, lengths - 1)

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
