"""The figure of a Boltzmann evaluation: energy and pair-distance histograms with the ESS in the title."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def boltzmann_figure(result: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Energy and pair-distance histograms (data, model samples, reweighted samples) with the ESS in the title."""
    from enf.figures import plt, save_figure

    hist = result["histograms"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, kind, label in ((axes[0], "energy", "energy E(x)"), (axes[1], "distance", "pair distance")):
        edges = np.asarray(hist[f"{kind}_edges"])
        centres = 0.5 * (edges[1:] + edges[:-1])
        ax.fill_between(centres, hist[f"{kind}_data_density"], step="mid", alpha=0.3, color="k", label="data")
        ax.step(centres, hist[f"{kind}_model_density"], where="mid", color="tab:blue", label="model samples")
        ax.step(centres, hist[f"{kind}_reweighted_density"], where="mid", color="tab:red", ls="--",
                label="reweighted samples")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
    axes[0].legend(frameon=False, fontsize=8)
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}reverse ESS {100 * result['reverse_ess']:.2f}%, forward ESS "
                 f"{100 * result['forward_ess']:.2f}% ({result['n_samples']} samples, {result['n_failed']} failed, "
                 f"trace {result['trace']})", fontsize=10)
    save_figure(fig, path)
