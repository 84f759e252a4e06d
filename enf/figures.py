"""Figures of a training run (matplotlib, Agg backend, written atomically as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from enf.io import atomic_path  # noqa: E402


def save_figure(fig: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def training_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Train loss and validation NLL against epoch, and function evaluations per solve."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["train_nll"] for h in history], label="train NLL")
    val = [(h["epoch"], h["val_nll"]) for h in history if h.get("val_nll") is not None]
    if val:
        ax1.plot(*zip(*val), "o-", label="validation NLL")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("nats")
    ax1.legend()
    ax2.plot(epochs, [h["nfe"] for h in history], color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("function evaluations per solve")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
