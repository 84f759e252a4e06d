"""DW4 / LJ13 generation: files, order, checks, reuse, refusals; a real (non-quick) DW4 run (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from enf.data.datasets import DATASETS, load_split
from enf.data.energies import make_energy
from enf.data.particles import generate_particles
from enf.errors import EnfError
from enf.io import load_npz, read_json, save_npz, sha256_file

TINY = {"n_train": 40, "n_valid": 20, "n_test": 20, "chains": 10, "eval_chains": 5, "burn_in": 20, "quick": True}


def _positions(path: Path, name: str = "dw4") -> np.ndarray:
    """A split's positions as training reads them (`load_split`: shapes and finiteness checked)."""
    return load_split(DATASETS.get(name), path)["positions"].numpy()


def _quiet(messages: list[str] | None = None):
    return (lambda _m: None) if messages is None else messages.append


@pytest.fixture(scope="module")
def tiny_dw4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dw4") / "data"
    generate_particles("dw4", out, seed=3, log=_quiet(), **TINY)
    return out


def test_files_shapes_and_meta(tiny_dw4: Path) -> None:
    meta = read_json(tiny_dw4 / "meta.json")
    energy = make_energy("dw4")
    for split, n in (("train", 40), ("valid", 20), ("test", 20)):
        arrays = load_npz(tiny_dw4 / f"{split}.npz", required=("positions", "energy"))
        pos = arrays["positions"]
        assert pos.shape == (n, 4, 2) and pos.dtype == np.float32
        np.testing.assert_array_equal(_positions(tiny_dw4 / f"{split}.npz"), pos)
        assert np.abs(pos.astype(np.float64).mean(1)).max() < 1e-6
        np.testing.assert_allclose(arrays["energy"], energy.energy(torch.as_tensor(pos, dtype=torch.float64)),
                                   rtol=1e-10)
        assert meta["files"][f"{split}.npz"]["sha256"] == sha256_file(tiny_dw4 / f"{split}.npz")
        diag = meta["splits"][split]
        assert diag["n"] == n and diag["configurational_temperature_se"] > 0
        assert {"acceptance", "thin", "iat_sweeps", "step_size"} <= set(diag["sampler"])
        assert "mode_mixing" in diag
    for fig in ("energy_hist.png", "pair_distance_hist.png", "energy_trace.png"):
        assert (tiny_dw4 / fig).stat().st_size > 1000 and fig in meta["files"]
    assert meta["args"]["seed"] == 3 and meta["quick"] is True and meta["code_version"].startswith("enf ")
    assert meta["energy"]["name"] == "dw4" and meta["energy"]["d0"] == 4.0


def test_splits_come_from_separate_chains(tiny_dw4: Path) -> None:
    # Each split has its own chains (own seed): no configuration is shared between splits.
    rows = {s: {r.tobytes() for r in _positions(tiny_dw4 / f"{s}.npz")}
            for s in ("train", "valid", "test")}
    assert not rows["train"] & rows["valid"] and not rows["train"] & rows["test"] and not rows["valid"] & rows["test"]


def test_rerun_reuses_and_other_data_sets_are_refused(tiny_dw4: Path) -> None:
    messages: list[str] = []
    generate_particles("dw4", tiny_dw4, seed=3, log=_quiet(messages), **TINY)
    assert any("reusing" in m for m in messages)
    with pytest.raises(EnfError, match="holds a different data set"):
        generate_particles("dw4", tiny_dw4, seed=4, log=_quiet(), **TINY)
    with pytest.raises(EnfError, match="holds a different data set"):
        generate_particles("lj13", tiny_dw4, seed=3, openmm_check=False, log=_quiet(), **TINY)


def test_damaged_output_is_regenerated_and_force_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "d"
    generate_particles("dw4", out, seed=5, log=_quiet(), **TINY)
    first = sha256_file(out / "train.npz")
    (out / "train.npz").write_bytes(b"truncated")
    messages: list[str] = []
    generate_particles("dw4", out, seed=5, log=_quiet(messages), **TINY)
    assert any("damaged" in m for m in messages)
    assert sha256_file(out / "train.npz") == first                      # same seed: the same data again
    generate_particles("dw4", out, seed=6, force=True, log=_quiet(), **TINY)
    assert read_json(out / "meta.json")["args"]["seed"] == 6
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no temporary files left


def test_failure_while_writing_leaves_nothing_and_interrupted_runs_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import enf.data.particles as particles

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("disk full")

    out = tmp_path / "d"
    monkeypatch.setattr(particles, "_figures", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_particles("dw4", out, log=_quiet(), **TINY)
    assert list(out.iterdir()) == []                                   # the split files were removed again
    monkeypatch.undo()
    # A run killed outright leaves its marker and partial files: the same arguments start over.
    (out / ".incomplete.json").write_text(json.dumps({"dataset": "dw4", "args": _args(seed=0)}))
    (out / "train.npz").write_bytes(b"partial")
    messages: list[str] = []
    generate_particles("dw4", out, log=_quiet(messages), **TINY)
    assert any("interrupted" in m for m in messages)
    assert _positions(out / "train.npz").shape == (40, 4, 2)
    assert not (out / ".incomplete.json").exists()


def _args(seed: int) -> dict:
    return {"dataset": "dw4", "n_train": 40, "n_valid": 20, "n_test": 20, "seed": seed, "energy": "dw4",
            "burn_in": 20, "max_sweeps": 20_000, "rhat_target": 1.01, "quick": True, "chains": 10,
            "eval_chains": 5}


def test_unknown_files_without_meta_are_refused(tmp_path: Path) -> None:
    (tmp_path / "train.npz").write_bytes(b"something else")
    with pytest.raises(EnfError, match="no meta.json"):
        generate_particles("dw4", tmp_path, log=_quiet(), **TINY)


@pytest.mark.parametrize("kwargs,match", [
    ({"n_train": 0}, "--n-train"), ({"n_valid": -5}, "--n-valid"), ({"n_test": 10**9}, "--n-test"),
    ({"chains": 1}, "--chains"), ({"burn_in": 0}, "--burn-in"), ({"energy": "unique"}, "lj13 only"),
])
def test_impossible_settings_are_refused(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(EnfError, match=match):
        generate_particles("dw4", tmp_path / "x", log=_quiet(), **{**TINY, **kwargs})
    assert not (tmp_path / "x").exists()


def test_loader_refuses_bad_positions(tmp_path: Path) -> None:
    x = np.zeros((3, 4, 2), dtype=np.float32)
    dw4, lj13 = DATASETS.get("dw4"), DATASETS.get("lj13")
    save_npz(tmp_path / "nan.npz", positions=np.where(np.arange(3)[:, None, None] == 1, np.nan, x))
    with pytest.raises(EnfError, match="NaN or infinite"):
        load_split(dw4, tmp_path / "nan.npz")
    save_npz(tmp_path / "shape.npz", positions=x)
    with pytest.raises(EnfError, match="lj13 needs"):
        load_split(lj13, tmp_path / "shape.npz")
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "shape.npz").read_bytes()[:50])
    with pytest.raises(EnfError, match="corrupt or truncated"):
        load_split(dw4, tmp_path / "trunc.npz")


def test_lj13_quick_unique_energy(tmp_path: Path) -> None:
    meta = generate_particles("lj13", tmp_path / "lj", energy="unique", openmm_check=False, log=_quiet(),
                              **{**TINY, "n_train": 20, "n_valid": 10, "n_test": 10})
    assert meta["energy"]["convention"] == "unique" and "openmm" not in meta["checks"]
    assert _positions(tmp_path / "lj" / "train.npz", "lj13").shape == (20, 13, 3)


@pytest.mark.slow
def test_real_dw4_run_passes_its_checks_and_mixes_modes(tmp_path: Path) -> None:
    meta = generate_particles("dw4", tmp_path / "dw4", n_train=640, n_valid=160, n_test=160, chains=64,
                              eval_chains=16, seed=1, log=_quiet())
    assert meta["checks"]["passed"] and not meta["quick"]
    for split in ("train", "valid", "test"):
        diag = meta["splits"][split]
        assert abs(diag["configurational_temperature"] - 1) < 4 * diag["configurational_temperature_se"]
        sampler = diag["sampler"]
        assert all(r < sampler["equilibration"]["rhat_limit"]
                   for r in sampler["equilibration"]["rhat_thinned"].values())
        assert sampler["thin"] >= max(sampler["equilibration"]["iat"], 1)
        mixing = diag["mode_mixing"]
        assert mixing["chains_visiting_both_modes"] > 0.9
        assert 0.3 < mixing["long_pair_fraction_of_samples"] < 0.7
