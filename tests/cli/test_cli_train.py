"""The train / evaluate / sample commands, and their refusal of bad input with a one-line message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enf.cli import main

FAST = ["--set", "model.hidden_nf=8", "--set", "model.n_layers=1", "--set", "train.batch_size=16",
        "--set", "flow.rtol=1e-3", "--set", "flow.atol=1e-3", "--no-progress"]


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--dataset", "dw4", "--model", "enf", "--data", str(data), "--n-train", "32",
                 "--seed", "1", "--out", str(out), "--epochs", "1", *FAST, *extra])


def test_train_evaluate_sample(dw4_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(dw4_dir, run) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["seed"] == 1 and metrics["epochs"] == 1
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(dw4_dir / "test.npz"),
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 32 and result["trace"] == "exact"
    assert result["nll"] == pytest.approx(metrics["test_nll"], abs=1e-4)  # same model, same exact estimator
    assert result["nll_sem"] > 0 and result["subset"] == "all 32"
    # --n draws a seeded random subset (QM9's split is in size order, so its first N would be biased)
    for seed in ("0", "0", "1"):
        assert main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(dw4_dir / "test.npz"),
                     "--out", str(tmp_path / f"eval{seed}.json"), "--n", "8", "--seed", seed]) == 0
    subsets = {seed: json.loads((tmp_path / f"eval{seed}.json").read_text()) for seed in ("0", "1")}
    assert subsets["0"]["n"] == 8 and subsets["0"]["subset"] == "8 of 32 drawn at random (seed 0)"
    assert subsets["0"]["nll"] != subsets["1"]["nll"]  # another seed, another subset (exact trace: no noise)
    # --per-sample keeps every sample's NLL per probe and its row in the file, for paired estimator comparisons
    rows = tmp_path / "rows.npz"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(dw4_dir / "test.npz"),
                 "--out", str(tmp_path / "probes.json"), "--n", "8", "--trace", "hutchinson", "--probes", "3",
                 "--per-sample", str(rows)]) == 0
    probed = json.loads((tmp_path / "probes.json").read_text())
    with np.load(rows) as kept:
        nll, index = kept["nll"], kept["index"]
    assert nll.shape == (8, 3) and probed["probes"] == 3 and probed["per_sample"] == str(rows)
    assert nll.mean() == pytest.approx(probed["nll"], rel=1e-12)
    assert probed["probe_noise_sd"] > 0
    assert probed["probe_noise_sd"] == pytest.approx(np.sqrt(nll.var(1, ddof=1).mean()), rel=1e-9)
    assert abs(nll.mean(1) - nll.mean()).max() > 0 and len(set(index.tolist())) == 8
    with np.load(dw4_dir / "test.npz") as test:  # the rows named are the rows evaluated: same exact NLL
        picked = test["positions"][np.sort(index)]
    np.savez(tmp_path / "picked.npz", positions=picked, energy=np.zeros(8))
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(tmp_path / "picked.npz"),
                 "--out", str(tmp_path / "picked.json")]) == 0
    assert json.loads((tmp_path / "picked.json").read_text())["nll"] == pytest.approx(subsets["0"]["nll"], rel=1e-9)
    samples = tmp_path / "samples.npz"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--n", "5", "--out", str(samples)]) == 0
    with np.load(samples) as data:
        assert data["positions"].shape == (5, 4, 2) and np.isfinite(data["positions"]).all()


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_is_refused_clearly(dw4_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    base = ["train", "--dataset", "dw4", "--data", str(dw4_dir), "--out", out, "--epochs", "1", *FAST,
            "--n-train", "32"]
    assert "unknown model 'nope'" in _error(capsys, [*base, "--model", "nope"])
    err = _error(capsys, ["train", "--dataset", "dw5", "--data", str(dw4_dir), "--out", out])
    assert "unknown dataset 'dw5'" in err and "dw4" in err
    assert "unknown config key 'train.lrr'" in _error(capsys, [*base, "--set", "train.lrr=1"])
    assert "train.batch_size" in _error(capsys, [*base, "--set", "train.batch_size=0"])
    assert "x.pt: checkpoint not found" in _error(capsys, [
        "evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--data", str(tmp_path / "missing.npz"),
        "--out", str(tmp_path / "e.json")])

    missing = tmp_path / "missing"
    missing.mkdir()
    assert "train.npz: data file not found" in _error(capsys, [*base[:4], str(missing), *base[5:]])

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for split in ("train", "valid", "test"):
        (corrupt / f"{split}.npz").write_bytes(b"PK\x03\x04 truncated")
    assert "corrupt or truncated" in _error(capsys, [*base[:4], str(corrupt), *base[5:]])

    shaped = tmp_path / "shaped"
    shaped.mkdir()
    for split in ("train", "valid", "test"):
        np.savez(shaped / f"{split}.npz", positions=np.zeros((40, 13, 3), np.float32))
    assert "needs (samples, 4, 2)" in _error(capsys, [*base[:4], str(shaped), *base[5:]])

    nan = tmp_path / "nan"
    nan.mkdir()
    for split in ("train", "valid", "test"):
        x = np.zeros((40, 4, 2), np.float32)
        x[7, 1, 0] = np.nan
        np.savez(nan / f"{split}.npz", positions=x)
    assert "NaN or infinite positions (first at row 7)" in _error(capsys, [*base[:4], str(nan), *base[5:]])

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for split in ("train", "valid", "test"):
        np.savez(wrong / f"{split}.npz", coords=np.zeros((40, 4, 2), np.float32))
    assert "missing array(s) ['positions']" in _error(capsys, [*base[:4], str(wrong), *base[5:]])

    assert "asked for 1000 samples" in _error(capsys, [*base, "--n-train", "1000"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: {lr: [1, 2\n")
    assert "not valid YAML" in _error(capsys, [*base, "--config", str(bad_yaml)])
