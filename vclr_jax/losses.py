"""The four VCLR losses and their metrics, as pure functions of embeddings (REFERENCE.md).

All embeddings are L2-normalised rows; keys and queues carry no gradient (callers pass
values computed with the EMA encoder). Queues are the negatives *before* this step's keys
are enqueued. Every function returns ``(loss, metrics)`` where ``loss`` is a scalar mean
over the rows described and ``metrics`` holds accuracies in [0, 1]:
a contrastive row counts as correct when its positive logit is strictly larger than every
negative one (the positive ranked first).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _info_nce_rows(positive_logits, negatives_logsumexp, negatives_max):
  """Per-row InfoNCE with target 0 for rows [positive, negatives...] and whether it is ranked first.

  The negatives enter only through their log-sum-exp and max, so several positives that share
  one query (the inter-frame loss) share one (B, K) query-queue product.
  """
  row_lse = jnp.logaddexp(positive_logits, negatives_logsumexp)
  return row_lse - positive_logits, positive_logits > negatives_max


def inter_frame_loss(q, k1, k2, k3, queue, temperature):
  """Inter-frame instance discrimination: 3B InfoNCE rows against the inter queue.

  Args:
    q: (B, D) online inter-head embedding of the anchor frame xq.
    k1, k2, k3: (B, D) EMA inter-head embeddings of x1 (the anchor re-augmented) and of the
      other two segments' frames x2, x3; each is one positive for q.
    queue: (K, D) inter-frame negatives, shared by the three rows of an example.
    temperature: logits are dot products divided by this.
  Returns:
    mean cross-entropy over the 3B rows [q.k_i, q.queue] / T with target 0, and
    {'inter_acc': fraction of rows with the positive first, 'inter_acc_same_frame': the same
    over the k1 rows (the anchor found again), 'inter_acc_other_segments': over the k2 and k3
    rows (another segment's frame found as the anchor's video)}.
  """
  negatives = q @ queue.T / temperature
  neg_lse = jax.nn.logsumexp(negatives, axis=-1)
  neg_max = negatives.max(axis=-1)
  positives = jnp.stack([jnp.sum(q * k, axis=-1) for k in (k1, k2, k3)]) / temperature
  losses, correct = _info_nce_rows(positives, neg_lse[None], neg_max[None])
  return losses.mean(), {'inter_acc': correct.mean(), 'inter_acc_same_frame': correct[0].mean(),
                         'inter_acc_other_segments': correct[1:].mean()}


def intra_frame_loss(q, k1, k2, k3, temperature):
  """Intra-frame instance discrimination: two 2-way softmaxes per example, no queue.

  Rows [q.k1, q.k2] and [q.k1, q.k3] divided by T, target 0: the re-augmented anchor must
  beat each other frame of the same video (all intra-head embeddings).
  Returns the mean over 2B rows and {'intra_acc'}.
  """
  positive = jnp.sum(q * k1, axis=-1) / temperature
  others = jnp.stack([jnp.sum(q * k2, axis=-1), jnp.sum(q * k3, axis=-1)]) / temperature
  losses, correct = _info_nce_rows(positive[None], others, others)
  return losses.mean(), {'intra_acc': correct.mean()}


def video_loss(q_video, k_video, queue, temperature):
  """Video-level instance discrimination: [q_v.k_v, q_v.queue] / T, target 0, mean over B.

  q_video is the online video head of the query tuple, k_video the EMA one of the key tuple.
  Returns the loss and {'video_acc'}.
  """
  negatives = q_video @ queue.T / temperature
  positive = jnp.sum(q_video * k_video, axis=-1) / temperature
  losses, correct = _info_nce_rows(positive, jax.nn.logsumexp(negatives, axis=-1),
                                   negatives.max(axis=-1))
  return losses.mean(), {'video_acc': correct.mean()}


def order_loss(logits, labels):
  """4-way cross-entropy of the order classifier; returns the mean and {'order_acc'}."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(jnp.float32, logits.dtype)),
                                 axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return nll.mean(), {'order_acc': (jnp.argmax(logits, axis=-1) == labels).mean()}
