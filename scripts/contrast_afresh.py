r"""The video-level contrast of a pretraining checkpoint, measured afresh on the whole training set.

  python scripts/contrast_afresh.py --run=runs/demo --videos=data/synthetic [--step=100]

During training, video_acc scores the positive key against the queue: keys of earlier steps,
made by an EMA encoder that has moved since. This script scores every training video's query
tuple (online encoder) against the key tuples of all the others, every key made by the same
encoder state: one VCLR example per video (its sampling and the device augmentation of the
run's config), batches of the run's batch size, BatchNorm on batch statistics as in training.
It prints, as JSON, the accuracy against 64 negatives (the demo's queue size) drawn at random
from the other videos (exact expectation, not a draw), the same against negatives of other
classes only, of the same class only, of the same batch only and of other batches only, and the
share of same-class keys among those that beat the positive (against its chance share). Frames
are decoded with PyAV and fitted on the run's canvas with PIL (the reader uses TensorFlow's
antialiased resize: close, not bit-equal).

With --negatives_step, the negatives' keys come from the EMA encoder of that (earlier)
checkpoint, as a queue's keys come from earlier steps, while the positive keys stay those of
--step: the difference between the two accuracies is what the keys' age alone gives.

The inter-frame term is scored the same way, row by row: the anchor frame's online inter
embedding q against k1 (the anchor frame re-augmented) and against k2, k3 (the query tuple's
frames of the other two segments), all keys from the EMA encoder in one BatchNorm batch, the
negatives drawn from the other videos' k2 and k3 keys (what the demo's 64-row queue holds: each
step writes k1, k2, k3 in blocks of the batch, the last two blocks stay). It prints the
accuracy of the k1 rows and of the k2/k3 rows apart: whether a frame is told from other videos'
frames as itself, or as its video. With --split_inter_by_phase (videos of
``input_pipeline.synthetic`` generated with --generator_seed) the k2/k3 rows are also scored
apart by whether the two frames play the same phase (the generator, rerun, says which phase
each frame plays).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import av
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vclr_jax import augment  # noqa: E402
from vclr_jax import batch as batch_layout  # noqa: E402
from vclr_jax import checkpointing  # noqa: E402
from vclr_jax import in_memory_data  # noqa: E402
from vclr_jax import train_state  # noqa: E402
from vclr_jax import train_step  # noqa: E402

NEGATIVES = 64


def fill_canvas(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes to cover (height, width), then crops the centre (as the training reader does)."""
  h, w = frame.shape[:2]
  scale = max(height / h, width / w)
  size = (max(width, round(w * scale)), max(height, round(h * scale)))
  image = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))
  top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
  return image[top:top + height, left:left + width]


def training_examples(videos_dir: str, frame_size, seed: int):
  """One VCLR example per training video: its 6 frames on the canvas, anchor, label, the
  video's path in the list and the query tuple's frame indices."""
  rng = np.random.default_rng(seed)
  examples = []
  with open(os.path.join(videos_dir, 'train.txt')) as f:
    lines = [line.split() for line in f if line.strip()]
  for relative, label in lines:
    with av.open(os.path.join(videos_dir, relative)) as container:
      frames = [frame.to_ndarray(format='rgb24') for frame in container.decode(video=0)]
    key_indices, query_indices, anchor = in_memory_data.sample_frame_indices(len(frames), rng)
    chosen = np.concatenate([query_indices, key_indices])
    examples.append((np.stack([fill_canvas(frames[i], *frame_size) for i in chosen]), anchor,
                     int(label), relative, query_indices))
  return examples


def expected_accuracy(beaten_by: np.ndarray, candidates: np.ndarray, draws: int) -> float:
  """Mean over rows of P(none of ``draws`` negatives drawn from the row's candidates beats the
  positive), where ``beaten_by`` counts the candidates that score above the positive."""
  return float(np.mean([math.comb(int(m) - int(c), min(draws, int(m))) /
                        math.comb(int(m), min(draws, int(m)))
                        for c, m in zip(beaten_by, candidates)]))


def arrange_inter_keys(x1_keys, tuple_keys, anchors):
  """(b, 3, D): each example's inter positives k1, k2, k3, from x1's keys (b, D) and the query
  tuple's keys (3b, D, example-major: rows 3i, 3i + 1, 3i + 2 are example i's segments)."""
  b = x1_keys.shape[0]
  by_segment = tuple_keys.reshape(b, 3, -1)
  rows = jnp.arange(b)
  other_a, other_b = train_step.other_segments(anchors)
  return jnp.stack([x1_keys, by_segment[rows, other_a], by_segment[rows, other_b]], 1)


def same_phase_as_anchor(examples, generator_seed: int) -> np.ndarray:
  """(n, 2) bool: whether x2 and x3 play the anchor frame's phase, from the generator rerun."""
  from input_pipeline import synthetic
  same = []
  for _, anchor, label, relative, query_indices in examples:
    name, video = relative.split('/')[0], int(relative.rsplit('_', 1)[1].split('.')[0])
    _, _, playing = synthetic.render_video(tuple(name.split('-')),
                                           np.random.default_rng([generator_seed, label, video]))
    same.append([playing[query_indices[anchor]] == playing[query_indices[int(other)]]
                 for other in train_step.other_segments(anchor)])
  return np.array(same)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--run', required=True, help='the pretraining run directory')
  parser.add_argument('--videos', required=True,
                      help='the synthetic videos folder (list layout: train.txt and the mp4s)')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  parser.add_argument('--negatives_step', type=int, default=None,
                      help="checkpoint whose EMA encoder makes the negatives' keys")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--split_inter_by_phase', action='store_true',
                      help='score the k2/k3 rows apart by phase (synthetic videos only)')
  parser.add_argument('--generator_seed', type=int, default=0,
                      help='the --seed the synthetic videos were generated with')
  args = parser.parse_args(argv)

  config = checkpointing.load_run_config(args.run)
  item, step = checkpointing.encoder_checkpoint_path(args.run, args.step)
  state = ocp.StandardCheckpointer().restore(item)
  negatives_state = state
  if args.negatives_step is not None:
    negatives_item, _ = checkpointing.encoder_checkpoint_path(args.run, args.negatives_step)
    negatives_state = ocp.StandardCheckpointer().restore(negatives_item)
  model = train_state.build_model(config.model)
  augment_config = augment.AugmentConfig.from_config(config.data.augment)
  size = config.data.image_size
  examples = training_examples(args.videos, tuple(config.data.frame_size), args.seed)

  @jax.jit
  def embeddings(frames, anchors, key):
    b = frames.shape[0]
    crops_per_example = batch_layout.NUM_FRAMES + 1
    keys = augment.example_keys(key, jnp.arange(b), crops_per_example)
    sources = jnp.concatenate([jnp.broadcast_to(jnp.arange(batch_layout.NUM_FRAMES),
                                                (b, batch_layout.NUM_FRAMES)),
                               anchors[:, None]], axis=1)
    crops = augment.augment_frames(frames, sources, keys, size, augment_config)

    def video_embedding(params, batch_stats, tuples):
      features, _ = model.apply({'params': params, 'batch_stats': batch_stats},
                                tuples.reshape((3 * b,) + tuples.shape[2:]), train=True,
                                method='features', mutable=['batch_stats'])
      return model.apply({'params': params}, features.reshape(b, 3, -1),
                         method='video_embedding')

    def inter_embeddings(params, batch_stats, frames):
      features, _ = model.apply({'params': params, 'batch_stats': batch_stats}, frames,
                                train=True, method='features', mutable=['batch_stats'])
      return model.apply({'params': params}, features, method='frame_embeddings')['inter']

    rows = jnp.arange(b)
    online = inter_embeddings(state['params'], state['batch_stats'],
                              crops[:, :3].reshape((3 * b,) + crops.shape[2:]))
    q_inter = online.reshape(b, 3, -1)[rows, anchors]
    # x1 and the query tuple through the EMA encoder in one BN batch, as the fused key pass.
    ema = inter_embeddings(state['ema_params'], state['ema_batch_stats'],
                           jnp.concatenate([crops[:, 6], crops[:, :3].reshape(
                               (3 * b,) + crops.shape[2:])]))
    inter_keys = arrange_inter_keys(ema[:b], ema[b:], anchors)
    return (video_embedding(state['params'], state['batch_stats'], crops[:, :3]),
            video_embedding(state['ema_params'], state['ema_batch_stats'], crops[:, 3:6]),
            video_embedding(negatives_state['ema_params'], negatives_state['ema_batch_stats'],
                            crops[:, 3:6]),
            q_inter, inter_keys)

  order = np.random.default_rng(args.seed).permutation(len(examples))
  b = config.batch_size
  order = order[:len(order) // b * b]
  outputs = []
  for start in range(0, len(order), b):
    chosen = [examples[i] for i in order[start:start + b]]
    outputs.append([np.asarray(x) for x in embeddings(
        jnp.asarray(np.stack([e[0] for e in chosen])),
        jnp.asarray(np.array([e[1] for e in chosen], np.int32)), jax.random.key(start))])
  queries, keys, negative_keys, inter_queries, inter_keys = (
      np.concatenate(parts) for parts in zip(*outputs))
  labels = np.array([examples[i][2] for i in order])
  n = len(order)
  positives = np.sum(queries * keys, axis=1)
  beats = queries @ negative_keys.T > positives[:, None]
  others = ~np.eye(n, dtype=bool)
  same_class = (labels[:, None] == labels[None, :]) & others
  batch_index = np.arange(n) // b
  same_batch = (batch_index[:, None] == batch_index[None, :]) & others

  def accuracy(mask, draws=NEGATIVES):
    return round(expected_accuracy((beats & mask).sum(1), mask.sum(1), draws), 3)

  # Inter rows: candidates are the other videos' k2 and k3 keys.
  inter_negatives = inter_keys[:, 1:].reshape(2 * n, -1)
  inter_others = np.repeat(others, 2, axis=1)
  inter_scores = inter_queries @ inter_negatives.T

  def inter_accuracy(positive_rows, selected=None):
    """Over the rows of positives ``positive_rows`` (0: k1, 1: k2, 2: k3), those of each
    column of ``selected`` (n, len(positive_rows)) bool only, if given."""
    beaten, candidates = [], []
    for column, row in enumerate(positive_rows):
      positives = np.sum(inter_queries * inter_keys[:, row], axis=1)
      keep = np.ones(n, bool) if selected is None else selected[:, column]
      beaten.append(((inter_scores > positives[:, None]) & inter_others).sum(1)[keep])
      candidates.append(inter_others.sum(1)[keep])
    return round(expected_accuracy(np.concatenate(beaten), np.concatenate(candidates),
                                   NEGATIVES), 3)

  by_phase = {}
  if args.split_inter_by_phase:
    same = same_phase_as_anchor([examples[i] for i in order], args.generator_seed)
    by_phase = {'inter_acc_k2_k3_rows_same_phase': inter_accuracy((1, 2), same),
                'inter_acc_k2_k3_rows_other_phase': inter_accuracy((1, 2), ~same),
                'k2_k3_rows_same_phase_share': round(float(same.mean()), 3)}
  print(json.dumps({
      'run': args.run, 'step': step,
      'negatives_step': step if args.negatives_step is None else args.negatives_step,
      'videos': n,
      f'acc_vs_{NEGATIVES}_negatives': accuracy(others),
      f'acc_vs_{NEGATIVES}_other_class_negatives': accuracy(others & ~same_class),
      'acc_vs_all_same_class_negatives': accuracy(same_class, n),
      'acc_vs_all_same_batch_negatives': accuracy(same_batch, n),
      f'acc_vs_{NEGATIVES}_other_batch_negatives': accuracy(others & ~same_batch),
      'same_class_share_of_keys_beating_the_positive':
          round(float((beats & same_class).sum() / max(1, beats.sum())), 3),
      'same_class_share_by_chance': round(float(same_class.sum() / others.sum()), 3),
      f'inter_acc_vs_{NEGATIVES}_negatives': inter_accuracy((0, 1, 2)),
      'inter_acc_k1_rows': inter_accuracy((0,)),
      'inter_acc_k2_k3_rows': inter_accuracy((1, 2)),
      **by_phase,
  }))


if __name__ == '__main__':
  main()
