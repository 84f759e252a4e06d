"""Training curves (enf/figures.py): readable for one iteration and for thousands, per iteration and per epoch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from enf.figures import curves_figure, training_curves


def _rows(n: int, per_epoch: int, seed: int = 0) -> list[dict]:
    """A step history as enf train writes it: noisy decaying loss, a validation after every epoch."""
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(1, n + 1):
        loss = 3 + 20 * np.exp(-step / max(n / 10, 1)) + rng.normal() * 0.8
        rows.append({"step": step, "epoch": (step - 1) // per_epoch, "time": 1e9 + step, "train_loss": loss,
                     "train_nll": loss, "train_reg": 0.0, "nfe": 14 + int(rng.integers(0, 3)),
                     "grad_norm": 50 + abs(rng.normal()) * 10, "clipped": int(step % 97 == 0), "lr": 5e-4,
                     "seconds": 0.1})
        if step % per_epoch == 0:
            rows.append({"step": step, "epoch": (step - 1) // per_epoch, "time": 1e9 + step, "val_nll": loss + 0.5,
                         "val_nll_sem": 0.1, "val_nfe": 20, "val_seconds": 1.0})
    return rows


def _plotted(ax) -> int:  # noqa: ANN001
    """How many points the lines of an axis hold."""
    return sum(len(line.get_xdata()) for line in ax.get_lines())


def test_one_iteration_is_visible_in_every_panel() -> None:
    fig = curves_figure([{"epoch": 0, "train_nll": 3.0, "nfe": 14.0}], "one step", steps=_rows(1, 1))
    loss, nfe, grad = fig.axes[:3]
    assert _plotted(loss) == 2 and _plotted(nfe) == 2 and _plotted(grad) >= 1  # training + validation points
    assert all(line.get_marker() not in ("", "None", None) for ax in (loss, nfe) for line in ax.get_lines())
    assert loss.get_xlabel() == "iteration" and nfe.get_ylabel() == "function evaluations per solve"


def test_six_thousand_iterations_show_points_a_running_mean_and_validations(tmp_path: Path) -> None:
    rows = _rows(6000, 1000)
    start = time.perf_counter()
    training_curves([], tmp_path / "curves.png", "6000 iterations", steps=rows)
    assert time.perf_counter() - start < 30 and (tmp_path / "curves.png").stat().st_size > 10_000
    fig = curves_figure([], "", steps=rows)
    loss = fig.axes[0]
    labels = [line.get_label() for line in loss.get_lines()]
    assert any(label.startswith("train NLL (mean of") for label in labels) and "validation NLL" in labels
    assert _plotted(loss) > 6000 + 6
    validation = next(line for line in loss.get_lines() if line.get_label() == "validation NLL")
    assert list(validation.get_xdata()) == [1000, 2000, 3000, 4000, 5000, 6000]
    assert loss.get_ylim()[1] > max(r["train_nll"] for r in rows if "train_nll" in r)  # nothing to hide here
    spiky = [{**r, "train_nll": 500.0} if r["step"] <= 10 and "train_nll" in r else r for r in rows]
    assert 24 < curves_figure([], "", steps=spiky).axes[0].get_ylim()[1] < 100  # ten huge first losses: clipped
    assert [child.get_xlabel() for child in loss.child_axes] == ["epochs done"]  # a secondary axis gives the epoch


def test_flow_matching_histories_plot_their_loss() -> None:
    rows = [{**r, "train_nll": 0.0} if "train_loss" in r else r for r in _rows(20, 10)]
    fig = curves_figure([], "", steps=rows)
    assert fig.axes[0].get_lines()[0].get_label() == "train loss"


def test_without_iterations_the_epochs_are_plotted(tmp_path: Path) -> None:
    history = [{"epoch": 0, "train_nll": 3.0, "nfe": 14.0, "val_nll": 3.5}]
    fig = curves_figure(history, "old run")
    assert fig.axes[0].get_xlabel() == "epoch" and _plotted(fig.axes[1]) == 1
    assert fig.axes[1].get_lines()[0].get_marker() == "o"  # one epoch: a visible point
    training_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").is_file()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
