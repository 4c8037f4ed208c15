"""The retrieval picture: a few queries and their top neighbours, correct green, wrong red."""

from __future__ import annotations

import numpy as np
from etils import epath


def retrieval_picture(path: str, query_thumbnails: np.ndarray, query_labels: np.ndarray,
                      neighbour_thumbnails: np.ndarray, neighbour_labels: np.ndarray,
                      class_names: list[str] | None = None) -> str:
  """Writes a PNG: row i is query i's middle frame, then its neighbours' (left = most similar).

  query_thumbnails (Q, s, s, 3) uint8, neighbour_thumbnails (Q, K, s, s, 3); a neighbour's
  frame is framed green when its class is the query's, red otherwise.
  """
  import matplotlib
  matplotlib.use('Agg')  # files only; no display on training machines
  import matplotlib.pyplot as plt

  name = (lambda label: class_names[label]) if class_names else str
  rows, cols = neighbour_thumbnails.shape[:2]
  figure, axes = plt.subplots(rows, cols + 1, figsize=(2 * (cols + 1), 2.1 * rows), squeeze=False)
  for row in range(rows):
    axes[row, 0].imshow(query_thumbnails[row])
    axes[row, 0].set_title(f'query: {name(int(query_labels[row]))}', fontsize=8)
    for col in range(cols):
      axis = axes[row, col + 1]
      axis.imshow(neighbour_thumbnails[row, col])
      correct = neighbour_labels[row, col] == query_labels[row]
      colour = 'tab:green' if correct else 'tab:red'
      axis.set_title(f'#{col + 1}: {name(int(neighbour_labels[row, col]))}', fontsize=8,
                     color=colour)
      for spine in axis.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
  for axis in axes.flat:
    axis.set_xticks([])
    axis.set_yticks([])
  figure.tight_layout()
  with epath.Path(path).open('wb') as f:
    figure.savefig(f, format='png', dpi=80)
  plt.close(figure)
  return path
