"""The pretraining batch: the one contract between every data source and the train step.

A batch is a dict of NumPy arrays (per host) or global jax.Arrays (sharded over the
``data`` mesh axis on the leading dimension). ``B`` is the batch size, ``H``/``W`` the
crop size, and every image is augmented independently and already normalised with the
ImageNet mean/std (so roughly zero-mean, unit-variance floats).

====================  ==============  ========  =============================================
name                  shape           dtype     meaning
====================  ==============  ========  =============================================
``query_frames``      (B, 3, H, W, 3) float32   query tuple, one frame per segment, in
                                                temporal order (segment 0, 1, 2)
``key_frames``        (B, 3, H, W, 3) float32   key tuple: the other frame drawn in each
                                                segment, temporal order
``x1``                (B, H, W, 3)    float32   the anchor's frame decoded again and
                                                augmented independently
``anchor``            (B,)            int32     segment of the anchor frame: 0 or 2. ``xq`` is
                                                ``query_frames[:, anchor]``; ``x2``/``x3`` are
                                                the other two query frames in temporal order
``query_perm``        (B, 3)          int32     order in which the query tuple's frames are
                                                shown to the order head: identity, or one of
                                                [0,2,1] [1,0,2] [1,2,0] [2,0,1]
``key_perm``          (B, 3)          int32     the same for the key tuple
``order_label``       (B,)            int32     (query shuffled) + 2 * (key shuffled), 0..3
====================  ==============  ========  =============================================

Why tuples stay in temporal order with a separate permutation: ``xq``, ``x2`` and ``x3``
are the very same augmented images as the query tuple (REFERENCE.md), so sending them once
saves three of the seven crops, and the permutation is applied to the per-frame order
embeddings inside the step, which is the same as shuffling the frames before the
per-frame encoder.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

NUM_SEGMENTS = 3
# The four shuffles REFERENCE.md allows: every permutation of 3 but the identity and the reverse.
SHUFFLES = np.array([[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1]], dtype=np.int32)
IDENTITY = np.arange(NUM_SEGMENTS, dtype=np.int32)


def batch_shapes(batch_size: int, image_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Shape and dtype of every field, for a batch of ``batch_size`` at ``image_size`` px."""
  b, s = batch_size, image_size
  return {
      'query_frames': ((b, NUM_SEGMENTS, s, s, 3), np.dtype(np.float32)),
      'key_frames': ((b, NUM_SEGMENTS, s, s, 3), np.dtype(np.float32)),
      'x1': ((b, s, s, 3), np.dtype(np.float32)),
      'anchor': ((b,), np.dtype(np.int32)),
      'query_perm': ((b, NUM_SEGMENTS), np.dtype(np.int32)),
      'key_perm': ((b, NUM_SEGMENTS), np.dtype(np.int32)),
      'order_label': ((b,), np.dtype(np.int32)),
  }


def check_batch(batch: Mapping[str, np.ndarray], batch_size: int, image_size: int) -> None:
  """Raises ValueError naming every field whose name, shape or dtype breaks the layout."""
  expected = batch_shapes(batch_size, image_size)
  problems = []
  for name, (shape, dtype) in expected.items():
    if name not in batch:
      problems.append(f'missing field {name!r}')
      continue
    got = batch[name]
    if tuple(got.shape) != shape or np.dtype(got.dtype) != dtype:
      problems.append(f'{name}: expected {shape} {dtype}, got {tuple(got.shape)} {got.dtype}')
  extra = sorted(set(batch) - set(expected))
  if extra:
    problems.append(f'unexpected fields {extra}')
  if problems:
    raise ValueError('Batch does not follow the layout in vclr_jax/batch.py: ' + '; '.join(problems))


def order_label(query_perm: np.ndarray, key_perm: np.ndarray) -> np.ndarray:
  """Order label of REFERENCE.md from the two permutations: shuffled query + 2 * shuffled key."""
  query_shuffled = np.any(query_perm != IDENTITY, axis=-1)
  key_shuffled = np.any(key_perm != IDENTITY, axis=-1)
  return (query_shuffled.astype(np.int32) + 2 * key_shuffled.astype(np.int32))
