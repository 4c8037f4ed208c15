"""Linear probes on frozen features: the reference's SVM (scikit-learn) and a JAX classifier.

``svm_probe`` solves the reference's problem exactly: liblinear ``-s 2`` (L2-regularised
squared-hinge SVM in the primal, C = 1, no bias), one-vs-rest, which is scikit-learn's
LinearSVC(dual=False, C=1, fit_intercept=False). It runs on the CPU and is the number to
compare with the paper.

``jax_probe`` trains a linear classifier with jnp on the accelerator for feature sets where
liblinear is too slow (Kinetics: 240k x 2048). Its objective is per-sample-mean loss +
l2 / 2 ||W||^2; with the 'squared_hinge' loss and l2 = 1 / (C N) this is the SVM problem
above divided by C N, so the two give the same classifier up to the optimiser's tolerance.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

LOSSES = ('squared_hinge', 'softmax')


def top_k_accuracies(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[str, float]:
  """{'top1': ..., 'top5': ...}: fraction of rows whose label is among the k highest scores.

  Ties in scores rank the lower class index first (a stable sort), like argmax.
  """
  order = np.argsort(-np.asarray(scores), axis=1, kind='stable')
  hits = order == np.asarray(labels)[:, None]
  return {f'top{k}': float(hits[:, :k].any(axis=1).mean()) for k in ks}


def svm_probe(train_features, train_labels, test_features, test_labels,
              C: float = 1.0) -> dict[str, float]:
  """Top-1/top-5 of the reference's one-vs-rest linear SVM (liblinear -s 2, no bias)."""
  from sklearn.svm import LinearSVC
  classifier = LinearSVC(dual=False, C=C, fit_intercept=False, max_iter=1000)
  classifier.fit(train_features, train_labels)
  decision = classifier.decision_function(test_features)
  if decision.ndim == 1:  # two classes: one column, the score of classes_[1]
    decision = np.stack([-decision, decision], axis=1)
  # Columns follow classifier.classes_, which lacks labels absent from the training set.
  num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
  scores = np.full((len(test_features), num_classes), -np.inf)
  scores[:, classifier.classes_] = decision
  return top_k_accuracies(scores, test_labels)


def _loss(weights, features, labels, num_classes: int, loss: str, l2: float):
  scores = features @ weights
  if loss == 'squared_hinge':
    signs = 2.0 * jax.nn.one_hot(labels, num_classes) - 1.0  # one-vs-rest targets +-1
    data_term = jnp.sum(jnp.square(jax.nn.relu(1.0 - signs * scores)), axis=1)
  else:
    data_term = optax.softmax_cross_entropy_with_integer_labels(scores, labels)
  return jnp.mean(data_term) + 0.5 * l2 * jnp.sum(jnp.square(weights))


def jax_probe(train_features, train_labels, test_features, test_labels,
              config: ml_collections.ConfigDict, log=print) -> dict[str, float]:
  """Top-1/top-5 of a linear classifier (no bias) trained with jnp.

  config: loss ('squared_hinge' or 'softmax'), l2 (0 < l2; -1 means 1 / (C N), the SVM's
  C = config.C), batch_size (0: full batch, optimised with L-BFGS; otherwise Adam on
  minibatches, cosine-decayed), steps, learning_rate (Adam only), seed.
  """
  if config.loss not in LOSSES:
    raise ValueError(f'config.linear.jax.loss must be one of {LOSSES}, got {config.loss!r}.')
  num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
  n = len(train_features)
  l2 = 1.0 / (config.C * n) if config.l2 < 0 else config.l2
  x = jnp.asarray(train_features, jnp.float32)
  y = jnp.asarray(train_labels, jnp.int32)
  weights = jnp.zeros((x.shape[1], num_classes), jnp.float32)
  objective = functools.partial(_loss, num_classes=num_classes, loss=config.loss, l2=l2)

  if config.batch_size == 0:
    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(lambda w: objective(w, x, y))

    @jax.jit
    def step(weights, opt_state, _):
      value, grad = value_and_grad(weights, state=opt_state)
      updates, opt_state = optimizer.update(grad, opt_state, weights, value=value, grad=grad,
                                            value_fn=lambda w: objective(w, x, y))
      return optax.apply_updates(weights, updates), opt_state, value
  else:
    # Decaying to zero lets the minibatch noise settle on the full-batch optimum.
    optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.steps))
    batch = min(config.batch_size, n)
    key = jax.random.key(config.seed)

    @jax.jit
    def step(weights, opt_state, index):
      rows = jax.random.choice(jax.random.fold_in(key, index), n, (batch,), replace=False)
      value, grad = jax.value_and_grad(objective)(weights, x[rows], y[rows])
      updates, opt_state = optimizer.update(grad, opt_state, weights)
      return optax.apply_updates(weights, updates), opt_state, value

  opt_state = optimizer.init(weights)
  start = time.time()
  log_every = max(1, config.steps // 10)
  for index in range(config.steps):
    weights, opt_state, value = step(weights, opt_state, index)
    if (index + 1) % log_every == 0:
      rate = (index + 1) / (time.time() - start)
      log(f'linear probe step {index + 1}/{config.steps} | objective {float(value):.5f} | '
          f'{rate:.1f} steps/s | ETA {(config.steps - index - 1) / rate:.0f}s')
  scores = np.asarray(jnp.asarray(test_features, jnp.float32) @ weights)
  return top_k_accuracies(scores, test_labels)
