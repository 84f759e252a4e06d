"""Figures of generated particle data: energy histograms, pair-distance histograms and the MCMC energy trace."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from enf.figures import plt, save_figure


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> None:
    save_figure(fig, path, dpi=100, tight=False)


def _hist_range(groups: Mapping[str, np.ndarray], lo_q: float = 0.001, hi_q: float = 0.999) -> tuple[float, float]:
    both = np.concatenate([np.ravel(v) for v in groups.values()])
    lo, hi = np.quantile(both, [lo_q, hi_q])
    return float(lo), float(hi) if hi > lo else float(lo + 1)


def histograms(groups: Mapping[str, np.ndarray], xlabel: str, title: str, path: str | os.PathLike[str],
               bins: int = 80) -> None:
    """Overlaid density histograms of several samples (one per split or sampler) on a shared range."""
    lo, hi = _hist_range(groups)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for name, values in groups.items():
        ax.hist(np.ravel(values), bins=bins, range=(lo, hi), density=True, histtype="step", lw=1.5,
                label=f"{name} (n={np.size(values):,})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def energy_trace(burn_in_mean: np.ndarray, sampling_trace: np.ndarray, burn_in_sweeps: int, title: str,
                 path: str | os.PathLike[str], n_chains_shown: int = 4) -> None:
    """The chain-mean energy through burn-in and equilibration, then a few single chains while sampling."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    ax0.plot(np.arange(1, len(burn_in_mean) + 1), burn_in_mean, lw=1)
    ax0.axvline(burn_in_sweeps, color="k", ls="--", lw=0.8, label="end of step-size adaptation")
    ax0.set_xscale("log")
    ax0.set_xlabel("sweep (burn-in and equilibration)")
    ax0.set_ylabel("mean energy over chains")
    ax0.legend()
    for c in range(min(n_chains_shown, sampling_trace.shape[0])):
        ax1.plot(sampling_trace[c], lw=0.6, label=f"chain {c}")
    ax1.set_xlabel("sweep (sampling phase)")
    ax1.set_ylabel("energy")
    ax1.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)
