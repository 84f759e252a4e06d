"""`enf data`: small end-to-end runs of every sub-command, reuse, and one-line refusals (exit status 2)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from enf.cli import main

TINY = ["--n-train", "30", "--n-valid", "10", "--n-test", "10", "--chains", "6", "--eval-chains", "4",
        "--burn-in", "20", "--quick"]


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("enf data: error:")
    return err


def test_dw4_end_to_end_reuse_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dw4"
    assert main(["data", "dw4", "--out", str(out), "--seed", "2", *TINY]) == 0
    with np.load(out / "train.npz") as data:
        assert data["positions"].shape == (30, 4, 2) and data["energy"].shape == (30,)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["args"]["n_train"] == 30 and set(meta["files"]) >= {"train.npz", "valid.npz", "test.npz"}
    capsys.readouterr()
    assert main(["data", "dw4", "--out", str(out), "--seed", "2", *TINY]) == 0
    assert "reusing" in capsys.readouterr().out
    assert "holds a different data set" in _error(capsys, ["data", "dw4", "--out", str(out), "--seed", "3", *TINY])


def test_lj13_end_to_end_unique_energy(tmp_path: Path) -> None:
    out = tmp_path / "lj13"
    assert main(["data", "lj13", "--out", str(out), "--energy", "unique", "--no-openmm-check", *TINY]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["energy"]["convention"] == "unique" and meta["args"]["openmm_check"] is False
    with np.load(out / "test.npz") as data:
        assert data["positions"].shape == (10, 13, 3)


def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--n-train" in _error(capsys, ["data", "dw4", "--out", str(tmp_path / "a"), "--n-train", "0"])
    assert "--chains" in _error(capsys, ["data", "lj13", "--out", str(tmp_path / "b"), "--chains", "1"])
    (tmp_path / "file").write_text("x")
    assert "not a directory" in _error(capsys, ["data", "dw4", "--out", str(tmp_path / "file"), *TINY])
    with pytest.raises(SystemExit):
        main(["data", "lj13", "--out", str(tmp_path / "c"), "--energy", "halved"])


def test_qm9_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert "not found" in _error(capsys, ["data", "qm9", "--out", str(tmp_path / "q"), "--source",
                                          str(tmp_path / "nowhere")])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert "pip install qm9pack" in _error(capsys, ["data", "qm9_positional", "--out", str(tmp_path / "p")])
    assert not (tmp_path / "q").exists() and not (tmp_path / "p").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("qm9pack") is None, reason="qm9pack is not installed")
def test_qm9_positional_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "qm9_positional"
    assert main(["data", "qm9_positional", "--out", str(out)]) == 0
    with np.load(out / "train.npz") as data:
        assert data["positions"].shape == (13_832, 19, 3)
    assert main(["data", "qm9_positional", "--out", str(out)]) == 0
    assert "reusing" in capsys.readouterr().out
