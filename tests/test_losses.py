"""Each loss and metric against a straightforward NumPy implementation of REFERENCE.md."""

import jax
import numpy as np
import pytest

from vclr_jax import losses

T = 0.1


def unit_rows(rng, n, d=16):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def cross_entropy_target0(logits):
  """-log softmax(logits)[0] for one row, computed the long way."""
  logits = np.asarray(logits, np.float64)
  return -(logits[0] - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max())


@pytest.fixture(autouse=True)
def float64():
  """The losses in float64 against the float64 references, so a 1e-12 match is meaningful."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def test_inter_frame_loss_matches_reference(rng):
  b, k = 5, 37
  q, k1, k2, k3 = (unit_rows(rng, b) for _ in range(4))
  k1[:3] = q[:3]  # some rows found, so the per-row accuracies differ
  queue = rng.uniform(-0.3, 0.3, size=(k, 16))
  rows, correct = [], []
  for key in (k1, k2, k3):
    for i in range(b):
      logits = np.concatenate([[q[i] @ key[i]], queue @ q[i]]) / T
      rows.append(cross_entropy_target0(logits))
      correct.append(np.argmax(logits) == 0)
  loss, metrics = losses.inter_frame_loss(q, k1, k2, k3, queue, T)
  np.testing.assert_allclose(loss, np.mean(rows), rtol=1e-12)
  np.testing.assert_allclose(metrics['inter_acc'], np.mean(correct))
  np.testing.assert_allclose(metrics['inter_acc_same_frame'], np.mean(correct[:b]))
  np.testing.assert_allclose(metrics['inter_acc_other_segments'], np.mean(correct[b:]))


def test_intra_frame_loss_matches_reference(rng):
  b = 7
  q, k1, k2, k3 = (unit_rows(rng, b) for _ in range(4))
  rows, correct = [], []
  for other in (k2, k3):
    for i in range(b):
      logits = np.array([q[i] @ k1[i], q[i] @ other[i]]) / T
      rows.append(cross_entropy_target0(logits))
      correct.append(logits[0] > logits[1])
  loss, metrics = losses.intra_frame_loss(q, k1, k2, k3, T)
  np.testing.assert_allclose(loss, np.mean(rows), rtol=1e-12)
  np.testing.assert_allclose(metrics['intra_acc'], np.mean(correct))


def test_video_loss_matches_reference(rng):
  b, k = 6, 20
  qv, kv = unit_rows(rng, b), unit_rows(rng, b)
  kv[:3] = qv[:3]  # some positives certainly ranked first
  queue = unit_rows(rng, k)
  rows = [cross_entropy_target0(np.concatenate([[qv[i] @ kv[i]], queue @ qv[i]]) / T)
          for i in range(b)]
  correct = [qv[i] @ kv[i] > np.max(queue @ qv[i]) for i in range(b)]
  loss, metrics = losses.video_loss(qv, kv, queue, T)
  np.testing.assert_allclose(loss, np.mean(rows), rtol=1e-12)
  np.testing.assert_allclose(metrics['video_acc'], np.mean(correct))


def test_order_loss_matches_reference(rng):
  logits = rng.normal(size=(9, 4)) * 3
  labels = rng.integers(0, 4, size=9)
  expected = np.mean([-(logits[i, labels[i]] - np.log(np.exp(logits[i]).sum())) for i in range(9)])
  loss, metrics = losses.order_loss(logits, labels)
  np.testing.assert_allclose(loss, expected, rtol=1e-12)
  np.testing.assert_allclose(metrics['order_acc'], np.mean(np.argmax(logits, 1) == labels))


def test_inter_loss_is_low_when_positives_align_and_queue_is_far(rng):
  q = unit_rows(rng, 4)
  loss_aligned, m = losses.inter_frame_loss(q, q, q, q, -q[:1].repeat(8, 0), T)
  loss_random, _ = losses.inter_frame_loss(q, *(unit_rows(rng, 4) for _ in range(3)),
                                           unit_rows(rng, 8), T)
  assert float(m['inter_acc']) == 1.0
  assert float(loss_aligned) < 1e-3 < float(loss_random)
