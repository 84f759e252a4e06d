"""Histograms of energies and pair distances (data, model samples, reweighted samples) and their JS divergences."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from enf.evaluation.metrics.distances import js_divergence

ENERGY_BINS = 80
DISTANCE_BINS = 100


def histogram(values: Tensor, edges: np.ndarray, weights: Tensor | None = None) -> np.ndarray:
    """Weighted counts in [underflow, bins..., overflow] (len(edges) + 1,); non-finite values are skipped."""
    v = values.detach().double().cpu().numpy()
    w = np.ones_like(v) if weights is None else np.broadcast_to(weights.detach().double().cpu().numpy(), v.shape)
    keep = np.isfinite(v) & np.isfinite(w)
    v, w = v[keep], w[keep]
    idx = np.searchsorted(edges, v, side="right")  # 0: below edges[0]; len(edges): at or above edges[-1]
    return np.bincount(idx, weights=w, minlength=len(edges) + 1).astype(np.float64)


def density(counts: np.ndarray, edges: np.ndarray) -> list[float]:
    """Inner-bin densities (probability per unit) normalised by the total mass including under/overflow."""
    total = counts.sum()
    if total <= 0:
        return [0.0] * (len(edges) - 1)
    return (counts[1:-1] / total / np.diff(edges)).tolist()


def js_or_none(p: np.ndarray, q: np.ndarray) -> float | None:
    """JS divergence of two histograms, None when either is empty."""
    return js_divergence(p, q) if p.sum() > 0 and q.sum() > 0 else None


def histogram_set(e_data: Tensor, e_model: Tensor, d_data: Tensor, d_model: Tensor,
                  weights: Tensor) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Energy and pair-distance counts of data, model samples and reweighted samples, with their bin edges.

    Energy bins span the data's range (10% below, 25% above); distance bins run to 1.25 times the data's largest.
    """
    lo, hi = float(e_data.min()), float(e_data.max())
    span = max(hi - lo, 1e-6)
    e_edges = np.linspace(lo - 0.1 * span, hi + 0.25 * span, ENERGY_BINS + 1)
    d_edges = np.linspace(0.0, 1.25 * float(d_data.max()), DISTANCE_BINS + 1)
    h = {
        "energy_data": histogram(e_data, e_edges),
        "energy_model": histogram(e_model, e_edges),
        "energy_reweighted": histogram(e_model, e_edges, weights),
        "distance_data": histogram(d_data, d_edges),
        "distance_model": histogram(d_model, d_edges),
        "distance_reweighted": histogram(d_model, d_edges, weights[:, None]),
    }
    return h, e_edges, d_edges


def histogram_summary(h: dict[str, np.ndarray], e_edges: np.ndarray, d_edges: np.ndarray) -> dict[str, object]:
    """The JSON form of `histogram_set`: edges, inner-bin densities and the mass outside the bins."""
    return {
        "energy_edges": e_edges.tolist(),
        "distance_edges": d_edges.tolist(),
        **{f"{k}_density": density(v, e_edges if k.startswith("energy") else d_edges) for k, v in h.items()},
        **{f"{k}_outside": [float(v[0] / v.sum()), float(v[-1] / v.sum())] if v.sum() > 0 else [0.0, 0.0]
           for k, v in h.items()},
    }
