"""The one figures helper (matplotlib on the Agg backend, `save_figure` writing PNGs atomically) and the training
run's curves. The data, metrics and Boltzmann figures draw with `plt` from here and save with `save_figure`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from enf.io import atomic_path  # noqa: E402

#: Up to this many points a per-iteration series is drawn with markers (one epoch of a small run stays visible).
FEW_POINTS = 60


def save_figure(fig: Any, path: str | Path, dpi: int = 110, tight: bool = True) -> None:
    """Write `fig` as a PNG atomically and close it (`tight`: crop to the drawn area)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)


def training_curves(history: list[dict[str, Any]], path: str | Path, title: str = "",
                    steps: list[dict[str, Any]] | None = None) -> None:
    """Write the training curves of a run: per iteration when `steps` (the rows of history_steps.csv) has
    any, else per epoch from `history` (the rows of history.csv)."""
    fig = curves_figure(history, title, steps)
    save_figure(fig, path)


def curves_figure(history: list[dict[str, Any]], title: str = "",
                  steps: list[dict[str, Any]] | None = None) -> Any:
    """The figure of `training_curves`: loss and validation NLL, function evaluations, gradient norm.

    Per iteration, every step is a faint point and a running mean (over about 2% of the steps) a line, so that the
    trend of a noisy loss is readable at 6,000 iterations and the points themselves at one; validations are
    markers at the iteration after which they ran; a secondary axis on top gives the epoch.
    """
    train = [r for r in steps or [] if "train_loss" in r]
    if not train:
        return _epoch_figure(history, title)
    valid = [r for r in steps or [] if "val_nll" in r]
    x = np.array([r["step"] for r in train], dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    # The NLL when the objective has one (flow matching records its loss alone, with NLL 0).
    loss_key = "train_nll" if any(r.get("train_nll") for r in train) else "train_loss"
    _series(axes[0], x, np.array([r.get(loss_key, np.nan) for r in train], dtype=float), "tab:blue",
            "train NLL" if loss_key == "train_nll" else "train loss")
    if valid:
        axes[0].plot([r["step"] for r in valid], [r["val_nll"] for r in valid], "o", color="tab:orange",
                     markersize=5, label="validation NLL", zorder=3)
    axes[0].set_ylabel("nats")
    _robust_ylim(axes[0], [r.get(loss_key, np.nan) for r in train] + [r["val_nll"] for r in valid])
    axes[0].legend(fontsize=8)
    _series(axes[1], x, np.array([r.get("nfe", np.nan) for r in train], dtype=float), "tab:green", "training")
    val_nfe = [(r["step"], r["val_nfe"]) for r in valid if "val_nfe" in r]
    if val_nfe:
        axes[1].plot(*zip(*val_nfe), "s", color="tab:red", markersize=5, label="validation", zorder=3)
    axes[1].set_ylabel("function evaluations per solve")
    axes[1].legend(fontsize=8)
    norms = np.array([r.get("grad_norm", np.nan) for r in train], dtype=float)
    _series(axes[2], x, norms, "tab:purple", "gradient norm")
    if np.all(norms[np.isfinite(norms)] > 0) and np.isfinite(norms).any():
        axes[2].set_yscale("log")
    clipped = [(r["step"], r["grad_norm"]) for r in train if r.get("clipped") and "grad_norm" in r]
    if clipped:
        axes[2].plot(*zip(*clipped), "x", color="black", markersize=4, label="clipped")
    axes[2].set_ylabel("gradient norm (before clipping)")
    axes[2].legend(fontsize=8)
    epochs = {r["epoch"] for r in train}
    per_epoch = len(train) / max(len(epochs), 1)
    for ax in axes:
        ax.set_xlabel("iteration")
        if len(x) == 1:
            ax.set_xlim(x[0] - 1, x[0] + 1)
        if len(epochs) > 1 and per_epoch >= 1 and float(per_epoch).is_integer():
            top = ax.secondary_xaxis("top", functions=(lambda s, k=per_epoch: s / k, lambda e, k=per_epoch: e * k))
            top.set_xlabel("epochs done", fontsize=8)
            top.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _series(ax: Any, x: np.ndarray, y: np.ndarray, color: str, label: str) -> None:
    """Raw points (faint; markers when few) and, with enough points, their running mean."""
    if len(x) <= FEW_POINTS:
        ax.plot(x, y, "o-", color=color, markersize=4, linewidth=0.8, alpha=0.8, label=label)
        return
    ax.plot(x, y, ".", color=color, markersize=1.5, alpha=0.25, rasterized=True)
    window = max(5, len(x) // 50)
    ok = np.isfinite(y)
    if ok.sum() >= window:
        kernel = np.ones(window) / window
        ax.plot(x[ok][window - 1:], np.convolve(y[ok], kernel, mode="valid"), color=color, linewidth=1.5,
                label=f"{label} (mean of {window})")
    else:
        ax.plot([], [], color=color, label=label)


def _robust_ylim(ax: Any, values: list[float]) -> None:
    """Keep a few large losses (the first iterations') from flattening the rest: when the largest value is far
    above the 99th percentile, the axis stops a little above that percentile."""
    y = np.array([v for v in values if np.isfinite(v)], dtype=float)
    if len(y) <= FEW_POINTS:
        return
    low, high = np.percentile(y, [1, 99])
    span = max(high - low, 1e-9)
    if y.max() > high + span:
        ax.set_ylim(min(y.min(), low) - 0.05 * span, high + 0.15 * span)


def _epoch_figure(history: list[dict[str, Any]], title: str) -> Any:
    """Per-epoch curves (a history without per-iteration rows)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    style = "o-" if len(epochs) <= FEW_POINTS else "-"
    key = "train_nll" if all("train_nll" in h for h in history) else "train_loss"
    ax1.plot(epochs, [h[key] for h in history], style, markersize=4,
             label="train NLL" if key == "train_nll" else "train loss")
    val = [(h["epoch"], h["val_nll"]) for h in history if h.get("val_nll") is not None]
    if val:
        ax1.plot(*zip(*val), "o", label="validation NLL")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("nats")
    ax1.legend()
    ax2.plot(epochs, [h["nfe"] for h in history], style, markersize=4, color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("function evaluations per solve")
    if title:
        fig.suptitle(title)
    return fig
