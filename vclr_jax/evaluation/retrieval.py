"""Nearest-neighbour video retrieval (REFERENCE.md): R@k of test queries against a train gallery.

Similarity is the cosine of the averaged features, computed with jnp on the accelerator in
chunks of queries so that a (queries x gallery) matrix never has to fit at once. Ties are
broken deterministically: of equally similar gallery videos the one with the lower gallery
index ranks first (jax.lax.top_k's documented order), so R@k never depends on the device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

RECALL_KS = (1, 5, 10, 20, 50)
QUERY_CHUNK = 1024


def _unit_rows(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames='k')
def _top_k_chunk(queries, gallery, k: int):
  similarity = _unit_rows(queries) @ _unit_rows(gallery).T
  return jax.lax.top_k(similarity, k)[1]


def nearest_neighbours(query_features: np.ndarray, gallery_features: np.ndarray,
                       k: int) -> np.ndarray:
  """(Q, k) gallery indices in descending cosine similarity; ties: lower gallery index first."""
  k = min(k, len(gallery_features))
  gallery = jnp.asarray(gallery_features, jnp.float32)
  chunks = [np.asarray(_top_k_chunk(jnp.asarray(query_features[start:start + QUERY_CHUNK],
                                                jnp.float32), gallery, k))
            for start in range(0, len(query_features), QUERY_CHUNK)]
  return np.concatenate(chunks) if chunks else np.zeros((0, k), np.int64)


def recall_at_k(query_features: np.ndarray, query_labels: np.ndarray,
                gallery_features: np.ndarray, gallery_labels: np.ndarray,
                ks=RECALL_KS) -> dict[str, float]:
  """{'R@k': fraction of queries with a gallery video of their class among their top k}."""
  if len(query_features) == 0 or len(gallery_features) == 0:
    raise ValueError('Retrieval needs at least one query and one gallery video; got '
                     f'{len(query_features)} queries and {len(gallery_features)} gallery videos.')
  neighbours = nearest_neighbours(query_features, gallery_features, max(ks))
  hits = np.asarray(gallery_labels)[neighbours] == np.asarray(query_labels)[:, None]
  # A k beyond the gallery size means "the whole gallery".
  return {f'R@{k}': float(hits[:, :k].any(axis=1).mean()) for k in ks}
