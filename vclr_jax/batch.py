"""The pretraining batch: the one contract between every data source and the train step.

A batch is a dict of NumPy arrays (per host) or global jax.Arrays (sharded over the
``data`` mesh axis on the leading dimension). ``B`` is the batch size and ``H``/``W`` the
frame canvas (``config.data.frame_size``). Frames travel as decoded uint8, not crops: the
seven random resized crops, flips and colour augmentation are cut inside the train step on
the accelerator (vclr_jax/augment.py), so a 340x256 K400 example ships 1.57 MB instead of
4.2 MB of float32 crops.

====================  ==============  ========  =============================================
name                  shape           dtype     meaning
====================  ==============  ========  =============================================
``frames``            (B, 6, H, W, 3) uint8     the query tuple (positions 0-2, one frame per
                      or                        segment, temporal order), then the key tuple
                      (B, 6, L, H, W, 3)        (3-5): the other frame drawn in each segment;
                                                with clips (clip_length L > 1) each of the six
                                                is a clip of L frames in temporal order
``anchor``            (B,)            int32     segment of the anchor frame: 0 or 2. ``xq`` is
                                                query crop ``anchor``; ``x2``/``x3`` are the
                                                other two query crops in temporal order; ``x1``
                                                is a second crop of frame ``anchor``
``query_perm``        (B, 3)          int32     order in which the query tuple's frames are
                                                shown to the order head: identity, or one of
                                                [0,2,1] [1,0,2] [1,2,0] [2,0,1]
``key_perm``          (B, 3)          int32     the same for the key tuple
``order_label``       (B,)            int32     (query shuffled) + 2 * (key shuffled), 0..3
====================  ==============  ========  =============================================

Why tuples stay in temporal order with a separate permutation: ``xq``, ``x2`` and ``x3``
are the very same augmented images as the query tuple (REFERENCE.md), so they are cut once,
and the permutation is applied to the per-frame order embeddings inside the step, which is
the same as shuffling the frames before the per-frame encoder.

Clips (``config.data.clip_length`` L > 1, a 3D backbone): the clip axis follows the tuple axis,
and everything said of a frame above holds for a clip (one crop, one embedding, one place in
the order). Single frames keep the 5-D layout, so the 2D path ships exactly what it did.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

NUM_SEGMENTS = 3
NUM_FRAMES = 2 * NUM_SEGMENTS  # decoded frames per example: query tuple, then key tuple
# The four shuffles REFERENCE.md allows: every permutation of 3 but the identity and the reverse.
SHUFFLES = np.array([[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1]], dtype=np.int32)
IDENTITY = np.arange(NUM_SEGMENTS, dtype=np.int32)


def clip_span(clip_length: int = 1, clip_stride: int = 1) -> int:
  """Frames from a clip's first to its last frame: (L - 1) x stride + 1."""
  return (clip_length - 1) * clip_stride + 1


def min_video_frames(clip_length: int = 1, clip_stride: int = 1) -> int:
  """The shortest video VCLR's sampling takes: 3 segments of F // 3 frames that each hold two
  disjoint clips, i.e. 6 x clip_span (6 for single frames, preparation's default)."""
  return NUM_FRAMES * clip_span(clip_length, clip_stride)


def frames_shape(count: int, frame_size: tuple[int, int], clip_length: int = 1
                 ) -> tuple[int, ...]:
  """``count`` frames of (H, W) = frame_size: (count, H, W, 3), or (count, L, H, W, 3) for
  clips of L > 1 frames (every reader's examples and every model's init input)."""
  clip_axis = (clip_length,) if clip_length > 1 else ()
  return (count,) + clip_axis + tuple(frame_size) + (3,)


def example_frames_shape(frame_size: tuple[int, int], clip_length: int = 1) -> tuple[int, ...]:
  """One example's frames: (6, H, W, 3), or (6, L, H, W, 3) for clips of L > 1 frames."""
  return frames_shape(NUM_FRAMES, frame_size, clip_length)


def batch_shapes(batch_size: int, frame_size: tuple[int, int], clip_length: int = 1
                 ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Shape and dtype of every field, for ``batch_size`` examples on a (H, W) canvas."""
  b = batch_size
  return {
      'frames': ((b,) + example_frames_shape(frame_size, clip_length), np.dtype(np.uint8)),
      'anchor': ((b,), np.dtype(np.int32)),
      'query_perm': ((b, NUM_SEGMENTS), np.dtype(np.int32)),
      'key_perm': ((b, NUM_SEGMENTS), np.dtype(np.int32)),
      'order_label': ((b,), np.dtype(np.int32)),
  }


def check_batch(batch: Mapping[str, np.ndarray], batch_size: int,
                frame_size: tuple[int, int], clip_length: int = 1) -> None:
  """Raises ValueError naming every field whose name, shape or dtype breaks the layout."""
  expected = batch_shapes(batch_size, frame_size, clip_length)
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


def random_batch(batch_size: int, frame_size: tuple[int, int], seed: int,
                 clip_length: int = 1) -> dict[str, np.ndarray]:
  """A batch of random frames in this layout, with valid anchors and permutations.

  For benchmarks that feed the train step or the device placement from memory (machines
  without TensorFlow or records).
  """
  rng = np.random.default_rng(seed)
  shape, _ = batch_shapes(batch_size, frame_size, clip_length)['frames']
  batch = {'frames': rng.integers(0, 256, shape, dtype=np.uint8)}
  batch['anchor'] = 2 * rng.integers(0, 2, batch_size).astype(np.int32)
  batch['query_perm'] = SHUFFLES[rng.integers(0, len(SHUFFLES), batch_size)]
  batch['key_perm'] = np.tile(IDENTITY, (batch_size, 1))
  batch['order_label'] = order_label(batch['query_perm'], batch['key_perm'])
  return batch


def clip_shape(data_config) -> tuple[int, int]:
  """(clip_length, clip_stride) of a run's config.data; (1, 1), single frames, for runs
  recorded before clips existed."""
  return data_config.get('clip_length', 1), data_config.get('clip_stride', 1)
