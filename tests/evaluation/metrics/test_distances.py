"""Relative-distance histograms (binning, masking) and the Jensen-Shannon divergence."""

from __future__ import annotations

import numpy as np
import pytest

from enf.errors import EnfError
from enf.evaluation.metrics.distances import js_divergence, kl_divergence, normalise_histogram, rel_dist_histogram


def test_js_of_a_histogram_with_itself_is_zero() -> None:
    counts = np.random.default_rng(0).integers(0, 1000, size=100)
    assert js_divergence(counts, counts) == 0.0
    assert js_divergence(counts, 3 * counts) == pytest.approx(0.0, abs=1e-15)


def test_js_is_symmetric_and_bounded_by_log_two() -> None:
    rng = np.random.default_rng(1)
    p, q = rng.integers(0, 50, size=100), rng.integers(0, 50, size=100)
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p))
    assert 0 < js_divergence(p, q) < np.log(2)
    disjoint_a, disjoint_b = np.r_[np.ones(50), np.zeros(50)], np.r_[np.zeros(50), np.ones(50)]
    assert js_divergence(disjoint_a, disjoint_b) == pytest.approx(np.log(2), abs=1e-6)


def test_js_matches_closed_form() -> None:
    """p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4) and JS = (3/4) log(4/3) (up to the 1e-10 per bin)."""
    assert js_divergence(np.array([1, 0]), np.array([1, 1])) == pytest.approx(0.75 * np.log(4 / 3), abs=1e-8)
    q = normalise_histogram(np.array([1, 1]), eps=0.0)
    assert kl_divergence(q, q) == 0.0


def test_binning_counts_ordered_pairs_and_clips_large_distances() -> None:
    x = np.array([[[0, 0, 0], [0.05, 0, 0], [20.0, 0, 0]]])
    counts = rel_dist_histogram(x)
    assert counts.sum() == 6  # ordered pairs i != j
    assert counts[0] == 2 and counts[99] == 4  # 0.05 A in bin 0; 20 A and 19.95 A in the last bin
    edges = rel_dist_histogram(np.array([[[0, 0, 0], [0.13, 0, 0]]]) * 1.0001)
    assert edges[1] == 2


def test_mask_and_nan_are_excluded() -> None:
    x = np.array([[[0, 0, 0], [1.0, 0, 0], [np.nan, 0, 0]], [[0, 0, 0], [2.0, 0, 0], [9.0, 9, 9]]])
    mask = np.array([[True, True, True], [True, True, False]])
    counts = rel_dist_histogram(x, mask)
    assert counts.sum() == 4
    assert counts[int(1.0 / 0.13)] == 2 and counts[int(2.0 / 0.13)] == 2


def test_chunking_does_not_change_counts() -> None:
    x = np.random.default_rng(2).normal(scale=3, size=(50, 7, 3))
    assert (rel_dist_histogram(x, chunk=3) == rel_dist_histogram(x)).all()


def test_bad_input() -> None:
    with pytest.raises(EnfError, match="positive sum"):
        js_divergence(np.zeros(5), np.ones(5))
    with pytest.raises(EnfError, match="same bins"):
        js_divergence(np.ones(5), np.ones(6))
    with pytest.raises(EnfError, match="shape"):
        rel_dist_histogram(np.zeros((4, 3)))
