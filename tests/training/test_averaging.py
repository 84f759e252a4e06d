"""The weight average (`train.ema`): its arithmetic, and that a run validates, selects and saves the average."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from enf.config import resolve
from enf.data.datasets import DATASETS, load_split
from enf.errors import EnfError
from enf.evaluation import evaluate_nll
from enf.models import checkpoints
from enf.models.checkpoints import load_model
from enf.training import train
from enf.training.averaging import WeightAverage


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))


def test_the_average_follows_its_formula_with_a_warm_up() -> None:
    model = Counter()
    average = WeightAverage(model, decay=0.99)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 40):
        with torch.no_grad():
            model.linear.weight.add_(0.1 * step)
            model.linear.bias.sub_(0.05)
            model.calls += 1
        average.update(step)
        d = min(0.99, (1 + step) / (10 + step))
        assert average.decay_at(step) == d
        for key in ("linear.weight", "linear.bias"):
            expected[key] = d * expected[key] + (1 - d) * model.state_dict()[key]
    for key in ("linear.weight", "linear.bias"):
        torch.testing.assert_close(average.shadow[key], expected[key])
    assert int(average.shadow["calls"]) == 39  # integer buffers are copied, not averaged


def test_applied_swaps_the_average_in_and_the_weights_back() -> None:
    model = Counter()
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.linear.weight.fill_(3.0)
    average.update(100)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with average.applied(model):
        torch.testing.assert_close(model.linear.weight, average.shadow["linear.weight"])
        assert not torch.equal(model.linear.weight, own["linear.weight"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, own[key])


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_the_open_unit_interval_is_refused(decay: float) -> None:
    with pytest.raises(ValueError):
        WeightAverage(Counter(), decay)
    if decay != 0.0:  # 0 is the setting's "off"
        with pytest.raises(EnfError, match="train.ema"):
            resolve("dw4", "enf", sets={"train": {"ema": decay}})


def test_a_run_selects_and_saves_the_averaged_weights(dw4_dir: Path, tmp_path: Path) -> None:
    cfg = resolve("dw4", "enf", 32, sets={
        "train": {"batch_size": 8, "eval_every": 1, "eval_batch_size": 32, "epochs": 3, "ema": 0.9, "lr": 1e-2},
        "model": {"hidden_nf": 8, "n_layers": 1}, "flow": {"rtol": 1e-3, "atol": 1e-3}})
    metrics = train(cfg, dw4_dir, tmp_path / "run", progress=False, test=False)
    model, payload = load_model(tmp_path / "run" / "checkpoint.pt")
    valid = load_split(DATASETS.get("dw4"), dw4_dir / "valid.npz", None, torch.float32)
    again = evaluate_nll(model, valid, 32, "exact")
    assert again["nll"] == pytest.approx(metrics["best_val_nll"], abs=1e-5)  # the saved weights are the scored ones
    last = checkpoints.load(tmp_path / "run" / "state" / "last.pt")
    assert set(last["weight_average"]) == set(last["model_state"])
    if metrics["best_epoch"] == 2:  # selected at the last epoch: the checkpoint is that epoch's average
        for key, value in last["weight_average"].items():
            assert torch.equal(payload["model_state"][key], value)
    assert any(not torch.equal(last["model_state"][k], last["weight_average"][k]) for k in last["model_state"])


def test_a_saved_state_without_its_weight_average_is_refused_before_any_change(dw4_dir: Path, tmp_path: Path) -> None:
    cfg = resolve("dw4", "enf", 32, sets={
        "train": {"batch_size": 16, "eval_every": 1, "eval_batch_size": 32, "epochs": 1, "ema": 0.9},
        "model": {"hidden_nf": 8, "n_layers": 1}, "flow": {"rtol": 1e-3, "atol": 1e-3}})
    run = tmp_path / "run"
    train(cfg, dw4_dir, run, progress=False, test=False)
    state = checkpoints.load(run / "state" / "last.pt")
    state["weight_average"] = None
    checkpoints.save(run / "state" / "last.pt", state)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(EnfError, match="last.pt: not a resumable state of this run"):
        train(cfg, dw4_dir, run, progress=False, test=False)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
