"""Training: a full run writes its results; a killed run resumes to the same answer; NaNs stop it cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from enf.config import resolve
from enf.errors import NumericalError
from enf.models import checkpoints
from enf.training import AdaptiveClipper, train
from enf.training.history import StepHistory, read_steps, rows_through

SETS = {"train": {"batch_size": 16, "eval_every": 1, "eval_batch_size": 32},
        "model": {"hidden_nf": 8, "n_layers": 1}, "flow": {"rtol": 1e-3, "atol": 1e-3}}


def _cfg(epochs: int = 3, **train_overrides: object) -> dict:
    sets = {**SETS, "train": {**SETS["train"], "epochs": epochs, **train_overrides}}
    return resolve("dw4", "enf", 32, sets=sets)


def test_run_writes_results(dw4_dir: Path, tmp_path: Path) -> None:
    metrics = train(_cfg(), dw4_dir, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "metrics.json", "history.csv", "config.yaml", "training_curves.png"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test_nll"] == pytest.approx(metrics["test_nll"])
    assert saved["epochs"] == 3 and saved["n_train"] == 32 and saved["test_n"] == 32
    assert saved["test_trace"] == "exact" and saved["mean_nfe"] > 0
    payload = checkpoints.load(run / "checkpoint.pt")
    assert payload["epoch"] == saved["best_epoch"] and payload["config"]["dataset"] == "dw4"
    assert "code_version" in payload and saved["code_version"].startswith("enf ")
    rows = read_steps(run / "history_steps.csv")  # per iteration (2 per epoch) and per validation
    assert [(r["step"], r["epoch"], "val_nll" in r) for r in rows] == [
        (1, 0, False), (2, 0, False), (2, 0, True), (3, 1, False), (4, 1, False), (4, 1, True),
        (5, 2, False), (6, 2, False), (6, 2, True)]
    assert all(r["nfe"] > 0 and r["grad_norm"] > 0 and r["lr"] > 0 and r["seconds"] > 0 and r["time"] > 1e9
               for r in rows if "train_loss" in r)
    assert all(r["val_nfe"] > 0 for r in rows if "val_nll" in r)


def test_no_test_leaves_the_test_split_unread(dw4_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The workflow's runs leave the test split to `enf evaluate`: read and evaluated once per run, not twice."""
    import enf.training.trainer

    calls = []
    real = enf.training.trainer.evaluate_nll
    monkeypatch.setattr(enf.training.trainer, "evaluate_nll", lambda model, data, *a, **k: calls.append(len(
        data["positions"])) or real(model, data, *a, **k))
    metrics = train(_cfg(epochs=1), dw4_dir, tmp_path / "run", progress=False, test=False)
    assert metrics["test_nll"] is None and metrics["test_n"] is None and metrics["best_val_nll"] is not None
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_nll"] is None
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and calls  # validation ran, on the validation split
    n_valid = len(np.load(dw4_dir / "valid.npz")["positions"])
    assert set(calls) == {n_valid}


def test_n_valid_validates_on_the_first_samples_of_the_validation_split(dw4_dir: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """`train.n_valid` bounds the cost of each validation: the first N samples, the same ones every time."""
    import enf.training.trainer

    seen = []
    real = enf.training.trainer.evaluate_nll
    monkeypatch.setattr(enf.training.trainer, "evaluate_nll", lambda model, data, *a, **k: seen.append(
        data["positions"].clone()) or real(model, data, *a, **k))
    train(_cfg(epochs=2, n_valid=5), dw4_dir, tmp_path / "run", progress=False, test=False)
    first = torch.as_tensor(np.load(dw4_dir / "valid.npz")["positions"][:5], dtype=seen[0].dtype)
    assert len(seen) == 2 and all(torch.equal(batch, first) for batch in seen)  # one per epoch


@pytest.mark.parametrize("ema", [0.0, 0.9])  # the weight average is part of the resumable state
def test_killed_run_resumes_to_the_same_result(ema: float, dw4_dir: Path, tmp_path: Path, monkeypatch) -> None:
    reference = train(_cfg(ema=ema), dw4_dir, tmp_path / "reference", progress=False)

    original = StepHistory.append

    def dying(self: StepHistory, row: dict) -> None:
        original(self, row)
        if row["step"] == 5:
            raise KeyboardInterrupt  # as if killed during the third epoch, after its first iteration

    monkeypatch.setattr(StepHistory, "append", dying)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(ema=ema), dw4_dir, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.json").exists()
    state = checkpoints.load(tmp_path / "run" / "state" / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 4
    assert read_steps(tmp_path / "run" / "history_steps.csv")[-1]["step"] == 5  # to be redone
    monkeypatch.setattr(StepHistory, "append", original)
    resumed = train(_cfg(ema=ema), dw4_dir, tmp_path / "run", progress=False)
    assert resumed["epochs"] == 3
    assert resumed["best_val_nll"] == pytest.approx(reference["best_val_nll"], abs=1e-9)
    assert resumed["test_nll"] == pytest.approx(reference["test_nll"], abs=1e-9)
    # The per-iteration history: the rows after the saved state replaced by the resumed run's, as if never killed.
    timing = ("time", "seconds", "val_seconds")
    got, want = (read_steps(tmp_path / d / "history_steps.csv") for d in ("run", "reference"))
    assert len(got) == len(want) == 9
    for row, expected in zip(got, want):
        assert sorted(row) == sorted(expected)
        assert {k: v for k, v in row.items() if k not in timing} == pytest.approx(
            {k: v for k, v in expected.items() if k not in timing}, abs=1e-9)


def test_the_resume_rule_keeps_the_rows_of_the_saved_state(tmp_path: Path) -> None:
    """A state saved at step S accounts for the iterations up to S and for the validation after S."""
    rows = [{"step": 1}, {"step": 2}, {"step": 2, "val_nll": 1.0}, {"step": 3}, {"step": 4},
            {"step": 4, "val_nll": 0.5}]
    assert rows_through(rows, 2) == rows[:3]
    assert rows_through(rows, 4) == rows
    assert rows_through(rows, 0) == []
    history = StepHistory(tmp_path / "history_steps.csv")
    assert history.start(None) == 0
    for row in rows[:5]:
        history.append({**row, "epoch": 0, "time": 1.5, "train_loss": 2.0} if "val_nll" not in row else row)
    with open(history.path, "a") as handle:
        handle.write("4,1,9.5,,,,,,,,,0.5")  # a line cut short by a kill is never a row, whatever its step
    before = history.path.read_text().splitlines()
    assert history.start(4) == 4
    assert history.path.read_text().splitlines() == before[:-1]
    assert history.start(2) == 2 and [r["step"] for r in read_steps(history.path)] == [1, 2, 2]


def test_resume_refuses_a_different_config(dw4_dir: Path, tmp_path: Path) -> None:
    train(_cfg(epochs=1), dw4_dir, tmp_path / "run", progress=False)
    with pytest.raises(Exception, match="different config"):
        train(_cfg(epochs=1, lr=1e-2), dw4_dir, tmp_path / "run", progress=False)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(dw4_dir: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    from enf.models.flows.particles import ParticleFlow

    original = ParticleFlow.nll
    calls = {"n": 0}

    def poisoned(self: ParticleFlow, batch: dict, trace: str | None = None) -> dict:
        out = original(self, batch, trace)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 2:  # epoch 0 has 2 steps; the first step of epoch 1 goes NaN
                out["nll"] = out["nll"] * float("nan")
        return out

    monkeypatch.setattr(ParticleFlow, "nll", poisoned)
    with pytest.raises(NumericalError, match="non-finite training loss at epoch 1"):
        train(_cfg(), dw4_dir, tmp_path / "run", progress=False)
    state = checkpoints.load(tmp_path / "run" / "state" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model_state"].values() if v.is_floating_point())


def test_adaptive_clipper_threshold_follows_recent_norms() -> None:
    clipper = AdaptiveClipper(init=3000.0)
    assert clipper.threshold() == pytest.approx(4500.0)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    norm, clipped = clipper([p])
    assert norm == pytest.approx(5.0) and not clipped
    p.grad = torch.tensor([1e6, 0.0, 0.0])
    norm, clipped = clipper([p])
    assert clipped and float(p.grad.norm()) == pytest.approx(clipper.queue[-1])


def test_augmentation_rotates_each_sample_rigidly() -> None:
    from enf.training import augment

    x = torch.randn(6, 5, 3)
    y = augment({"positions": x})["positions"]
    d = lambda a: torch.cdist(a, a)  # noqa: E731
    assert torch.allclose(d(x), d(y), atol=1e-5)
    assert not torch.allclose(x, y)


def test_numerical_error_is_an_enf_error() -> None:
    from enf.errors import EnfError

    assert issubclass(NumericalError, EnfError)
