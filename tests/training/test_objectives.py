"""The objective contract: `loss(model, batch)` returns "loss" and scalars, and every scalar reaches the histories
(history.csv, history_steps.csv) and the metrics the MLflow tracker logs from them."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from enf.config import resolve
from enf.models import build_model
from enf.training import HISTORY_COLUMNS, train
from enf.training.history import STEP_COLUMNS, read_steps
from enf.training.objectives import OBJECTIVE_CLASSES, FlowMatching, Likelihood, build_objective, history_column

ROOT = Path(__file__).resolve().parents[2]
SETS = {"train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 32, "eval_every": 1},
        "model": {"hidden_nf": 8, "n_layers": 1}, "flow": {"rtol": 1e-3, "atol": 1e-3}}


def _track_mlflow():
    spec = importlib.util.spec_from_file_location("track_mlflow", ROOT / "workflow" / "scripts" / "track_mlflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cfg(objective: str) -> dict:
    return resolve("dw4", "enf", 64, sets={**SETS, "train": {**SETS["train"], "objective": objective}})


def test_every_key_has_a_column_in_every_history_and_in_mlflow() -> None:
    track = _track_mlflow()
    for cls in OBJECTIVE_CLASSES:
        assert cls.keys[0] == "loss"
        for key in cls.keys:
            column = history_column(key)
            assert column in STEP_COLUMNS and column in HISTORY_COLUMNS, (cls.__name__, key)
            assert column in track.TRAIN_METRICS, (cls.__name__, key)


@pytest.mark.parametrize("objective", ["likelihood", "flow_matching"])
def test_loss_returns_exactly_its_keys_as_scalars(objective: str) -> None:
    torch.manual_seed(0)
    cfg = _cfg(objective)
    obj = build_objective(cfg)
    assert isinstance(obj, Likelihood if objective == "likelihood" else FlowMatching)
    model = build_model(cfg)
    out = obj.loss(model, {"positions": torch.randn(8, 4, 2)})
    assert set(out) == set(obj.keys)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert out["loss"].requires_grad
    if objective == "likelihood":
        assert float(out["nfe"]) == model.last_nfe > 0
        weight = float(cfg["flow"]["regularization"])
        assert float(out["loss"].detach()) == pytest.approx(float((out["nll"] + weight * out["reg"]).detach()))
    else:
        assert float(out["nfe"]) == 0 and float(out["pairing_seconds"]) >= 0


@pytest.mark.parametrize("objective", ["likelihood", "flow_matching"])
def test_every_scalar_reaches_the_step_and_epoch_histories(objective: str, dw4_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(objective)
    train(cfg, dw4_dir, tmp_path / "run", progress=False, test=False)
    columns = [history_column(key) for key in build_objective(cfg).keys]
    steps = [r for r in read_steps(tmp_path / "run" / "history_steps.csv") if "val_nll" not in r]
    assert len(steps) == 4
    assert all(column in row for row in steps for column in columns)
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        epochs = list(csv.DictReader(handle))
    assert len(epochs) == 2 and all(row[column] != "" for row in epochs for column in columns)
    track = _track_mlflow()
    logged = {key for row in read_steps(tmp_path / "run" / "history_steps.csv") if "val_nll" not in row
              for key, *_ in track.row_metrics({k: str(v) for k, v in row.items()})}
    assert set(columns) <= logged
