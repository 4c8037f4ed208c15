"""scripts/contrast_afresh.py: the expected accuracy against negatives drawn at random."""

import importlib.util
import itertools
import os

import numpy as np
import pytest

_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts',
                       'contrast_afresh.py')
_spec = importlib.util.spec_from_file_location('contrast_afresh', _SCRIPT)
contrast_afresh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(contrast_afresh)


@pytest.mark.parametrize('candidates,draws', [(6, 3), (7, 7), (5, 9)])
def test_expected_accuracy_equals_counting_every_draw_of_negatives(candidates, draws):
  # Rows whose positive is beaten by 0, 1, ... candidates: count, over every set of `draws`
  # negatives (all candidates when there are fewer), the sets holding none of the beaters.
  beaten_by = np.arange(candidates + 1)
  expected = []
  for beaters in beaten_by:
    sets = list(itertools.combinations(range(candidates), min(draws, candidates)))
    expected.append(np.mean([all(i >= beaters for i in chosen) for chosen in sets]))
  got = contrast_afresh.expected_accuracy(beaten_by, np.full_like(beaten_by, candidates), draws)
  assert got == pytest.approx(np.mean(expected), abs=1e-12)


def test_inter_keys_are_each_examples_own_frames():
  # Keys that say whose they are: x1's key of example i is (i, -1), the query tuple's key of
  # example i, segment s is (i, s); the positives are x1 and the two segments other than the
  # anchor's, in temporal order.
  b = 5
  anchors = np.array([0, 2, 2, 0, 2])
  x1_keys = np.stack([np.arange(b), np.full(b, -1)], 1).astype(np.float32)
  tuple_keys = np.array([[i, s] for i in range(b) for s in range(3)], np.float32)
  got = np.asarray(contrast_afresh.arrange_inter_keys(x1_keys, tuple_keys, anchors))
  expected = [[[i, -1]] + [[i, s] for s in range(3) if s != anchors[i]] for i in range(b)]
  np.testing.assert_array_equal(got, np.array(expected, np.float32))
