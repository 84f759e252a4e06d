"""Relative-distance histograms and the Jensen-Shannon divergence between them (the QM9-positional metric).

Protocol section 3: all ordered pairwise distances (i != j) of the samples, 100 equal bins on [0, 13) Angstrom
with larger distances in the last bin, normalised, plus 1e-10 per bin, against the same histogram of the training
molecules; JS divergence with natural logarithms.
"""

from __future__ import annotations

import numpy as np

from enf.errors import EnfError
from enf.evaluation.metrics.stability import DEFAULT_CHUNK
from enf.geometry import pair_distances

N_BINS = 100
MAX_DIST = 13.0
EPS = 1e-10


def bin_edges(n_bins: int = N_BINS, max_dist: float = MAX_DIST) -> np.ndarray:
    """The n_bins + 1 edges of the equal bins on [0, max_dist) (the last bin also holds larger distances)."""
    return np.linspace(0.0, max_dist, n_bins + 1)


def rel_dist_histogram(positions: np.ndarray, atom_mask: np.ndarray | None = None, n_bins: int = N_BINS,
                       max_dist: float = MAX_DIST, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """(n_bins,) int64 counts of all ordered distances i != j between real atoms; NaN distances are skipped."""
    positions = np.asarray(positions)
    if positions.ndim != 3 or positions.shape[2] != 3:
        raise EnfError(f"positions must have shape (molecules, atoms, 3), got {positions.shape}")
    n, n_max = positions.shape[:2]
    mask = np.ones((n, n_max), dtype=bool) if atom_mask is None else np.asarray(atom_mask, dtype=bool)
    if mask.shape != (n, n_max):
        raise EnfError(f"atom mask must have shape {(n, n_max)} to match positions, got {mask.shape}")
    off_diagonal = ~np.eye(n_max, dtype=bool)[None]
    counts = np.zeros(n_bins, dtype=np.int64)
    for start in range(0, n, chunk):
        block = slice(start, start + chunk)
        dist = pair_distances(positions[block], matrix=True)
        pairs = mask[block, :, None] & mask[block, None, :] & off_diagonal
        d = dist[pairs & np.isfinite(dist)]
        index = np.minimum((d / max_dist * n_bins).astype(np.int64), n_bins - 1)
        counts += np.bincount(index, minlength=n_bins)
    return counts


def normalise_histogram(counts: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Counts divided by their sum, plus `eps` per bin (as the authors do: not renormalised afterwards)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if counts.ndim != 1 or total <= 0 or not np.isfinite(total) or (counts < 0).any():
        raise EnfError(f"a histogram needs non-negative counts with a positive sum, "
                       f"got shape {counts.shape} summing to {total}")
    return counts / total + eps


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) = sum p log(p / q) in nats, for strictly positive vectors."""
    return float(np.sum(p * np.log(p / q)))


def js_divergence(counts_p: np.ndarray, counts_q: np.ndarray, eps: float = EPS) -> float:
    """Jensen-Shannon divergence (nats) of two histograms given as counts: (KL(p||m) + KL(q||m)) / 2, m = (p+q)/2."""
    p, q = normalise_histogram(counts_p, eps), normalise_histogram(counts_q, eps)
    if p.shape != q.shape:
        raise EnfError(f"histograms must have the same bins, got {p.shape} and {q.shape}")
    m = (p + q) / 2.0
    return (kl_divergence(p, m) + kl_divergence(q, m)) / 2.0
