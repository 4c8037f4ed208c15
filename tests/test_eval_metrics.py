"""Retrieval R@k and the linear probes against independent references on small feature sets."""

import ml_collections
import numpy as np
import pytest
from sklearn.svm import LinearSVC

from vclr_jax.evaluation import linear
from vclr_jax.evaluation import retrieval


def _brute_force_recall(queries, query_labels, gallery, gallery_labels, k):
  """Loops over queries; ranks by cosine, ties by lower gallery index (a stable sort)."""
  hits = 0
  for query, label in zip(queries, query_labels):
    similarity = np.array([float(np.dot(query, g)) / (np.linalg.norm(query) * np.linalg.norm(g))
                           for g in gallery])
    ranked = sorted(range(len(gallery)), key=lambda i: (-similarity[i], i))
    hits += any(gallery_labels[i] == label for i in ranked[:k])
  return hits / len(queries)


def test_recall_matches_brute_force_on_random_features():
  rng = np.random.default_rng(0)
  gallery = rng.normal(size=(60, 16)).astype(np.float32)
  gallery_labels = rng.integers(0, 6, 60)
  queries = rng.normal(size=(25, 16)).astype(np.float32)
  query_labels = rng.integers(0, 6, 25)
  got = retrieval.recall_at_k(queries, query_labels, gallery, gallery_labels)
  for k in retrieval.RECALL_KS:
    assert got[f'R@{k}'] == pytest.approx(
        _brute_force_recall(queries, query_labels, gallery, gallery_labels, k)), k
  assert got['R@50'] > got['R@1']


def test_exact_ties_rank_the_lower_gallery_index_first():
  # Gallery rows 0..3 are the same direction (scaled: equal cosine), labelled 3, 2, 1, 0.
  direction = np.array([1.0, 2.0, 0.0], np.float32)
  gallery = np.stack([direction, 2 * direction, 3 * direction, 0.5 * direction,
                      np.array([0.0, 0.0, 1.0], np.float32)])
  gallery_labels = np.array([3, 2, 1, 0, 0])
  queries = np.stack([direction, direction])
  query_labels = np.array([3, 1])
  neighbours = retrieval.nearest_neighbours(queries, gallery, 4)
  np.testing.assert_array_equal(neighbours, [[0, 1, 2, 3]] * 2)
  got = retrieval.recall_at_k(queries, query_labels, gallery, gallery_labels, ks=(1, 2, 3))
  assert got == {'R@1': 0.5, 'R@2': 0.5, 'R@3': 1.0}
  for k in (1, 2, 3):
    assert got[f'R@{k}'] == _brute_force_recall(queries, query_labels, gallery,
                                                gallery_labels, k)


def _toy_problem(separable: bool, seed=0, n=240, dim=12, classes=4):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)) * (6.0 if separable else 0.9)
  labels = np.arange(n) % classes
  features = centres[labels] + rng.normal(size=(n, dim))
  return features.astype(np.float32), labels


def test_svm_probe_is_perfect_on_separable_features_and_matches_scikit_learn():
  features, labels = _toy_problem(separable=True)
  assert linear.svm_probe(features[:160], labels[:160], features[160:], labels[160:]) == {
      'top1': 1.0, 'top5': 1.0}
  features, labels = _toy_problem(separable=False, seed=1)
  got = linear.svm_probe(features[:160], labels[:160], features[160:], labels[160:])
  reference = LinearSVC(dual=False, C=1.0, fit_intercept=False).fit(features[:160], labels[:160])
  assert got['top1'] == pytest.approx(np.mean(reference.predict(features[160:]) == labels[160:]))
  assert 0.3 < got['top1'] < 1.0  # a problem where the probe can be wrong
  assert got['top5'] == 1.0  # 4 classes: top-5 holds every class


def test_top_k_accuracies_break_ties_towards_the_lower_class():
  scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
  assert linear.top_k_accuracies(scores, np.array([0, 2]), ks=(1, 2)) == {'top1': 0.5,
                                                                        'top2': 1.0}


@pytest.mark.parametrize('loss,batch_size', [('squared_hinge', 0), ('squared_hinge', 64),
                                             ('softmax', 64)])
def test_jax_probe_matches_scikit_learn(loss, batch_size):
  features, labels = _toy_problem(separable=False, seed=2, n=1200)
  train, test = slice(0, 800), slice(800, None)
  reference = linear.svm_probe(features[train], labels[train], features[test], labels[test])
  config = ml_collections.ConfigDict(dict(loss=loss, l2=-1.0, C=1.0, batch_size=batch_size,
                                          steps=300 if batch_size else 100,
                                          learning_rate=0.05, seed=0))
  got = linear.jax_probe(features[train], labels[train], features[test], labels[test], config,
                         log=lambda line: None)
  assert 0.4 < reference['top1'] < 0.99
  # The squared hinge solves the SVM's own problem: within a point. Softmax is another
  # objective, so only close.
  tolerance = 0.01 if loss == 'squared_hinge' else 0.03
  assert abs(got['top1'] - reference['top1']) <= tolerance + 1e-9


def test_jax_probe_rejects_unknown_loss():
  features, labels = _toy_problem(separable=True)
  config = ml_collections.ConfigDict(dict(loss='hinge', l2=-1.0, C=1.0, batch_size=0, steps=1,
                                          learning_rate=0.1, seed=0))
  with pytest.raises(ValueError, match='config.linear.jax.loss'):
    linear.jax_probe(features, labels, features, labels, config)
