"""`enf analyze` end to end: hand-made molecules, positions only, failed samples, bad input, real QM9."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from enf.cli import main
from enf.errors import EnfError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation" / "metrics"))
from test_stability import broken_methane, ethyne, methane, water  # noqa: E402

pytest.importorskip("rdkit")
N_MAX = 6


def write_molecules(path: Path, molecules: list[tuple[np.ndarray, np.ndarray]], failed: list[bool] | None = None,
                    smiles: list[str] | None = None) -> Path:
    """Hand-made molecules in the QM9 .npz format (padded to N_MAX atoms)."""
    n = len(molecules)
    x, one_hot, mask = np.zeros((n, N_MAX, 3)), np.zeros((n, N_MAX, 5)), np.zeros((n, N_MAX), dtype=bool)
    for k, (pos, types) in enumerate(molecules):
        x[k, :len(pos)], mask[k, :len(pos)] = pos, True
        one_hot[k, np.arange(len(types)), types] = 1
    arrays = dict(positions=x.astype(np.float32), atom_mask=mask, one_hot=one_hot, num_atoms=mask.sum(1))
    if failed is not None:
        arrays["failed"] = np.array(failed)
    if smiles is not None:
        arrays["smiles"] = np.array(smiles)
    np.savez(path, **arrays)
    return path


def run(*args: str) -> int:
    return main(["analyze", *map(str, args)])


def test_molecules_with_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = write_molecules(tmp_path / "samples.npz",
                              [methane(), water(), broken_methane(), ethyne(), (np.full((5, 3), np.nan),
                                                                                methane()[1])],
                              failed=[False, False, False, False, True])
    reference = write_molecules(tmp_path / "train.npz", [methane(), methane()], smiles=["C", "[H]C([H])([H])[H]"])
    out = tmp_path / "res" / "metrics.json"
    assert run("--data", samples, "--reference", reference, "--out", out) == 0
    r = json.loads(out.read_text())
    assert (r["n_molecules"], r["n_failed"], r["n_failed_flagged"]) == (5, 1, 1)
    assert (r["n_stable_atoms"], r["n_atoms_total"]) == (5 + 3 + 3 + 4, 22)
    assert r["n_stable_molecules"] == 3 and r["mol_stability"] == pytest.approx(3 / 5)
    assert (r["n_valid"], r["n_connected"], r["n_unique"]) == (4, 3, 3)  # broken CH4 reads as methane
    assert r["validity"] == pytest.approx(4 / 5) and r["uniqueness"] == pytest.approx(3 / 4)
    assert (r["n_novel"], r["n_reference_smiles"]) == (2, 1)  # water and ethyne are new
    assert r["novelty"] == pytest.approx(2 / 3) and r["novelty_vs_dataset_smiles"] == pytest.approx(2 / 3)
    assert r["js_rel_dist"] > 0
    assert len(r["data_sha256"]) == 64 and r["code_version"].startswith("enf ")
    for name in ("molecules_grid_2d", "molecules_3d", "rel_dist_hist"):
        assert Path(r["figures"][name]).is_file() and Path(r["figures"][name]).parent == out.parent
    assert "atom_stability" in capsys.readouterr().out


def test_positions_only(tmp_path: Path) -> None:
    """QM9-positional: distance metrics only; a NaN sample is failed, not a crash; identical data give JS 0."""
    rng = np.random.default_rng(0)
    x = rng.normal(scale=1.5, size=(20, 19, 3))
    np.savez(tmp_path / "train.npz", positions=x)
    x_nan = x.copy()
    x_nan[3, 4] = np.nan
    np.savez(tmp_path / "samples.npz", positions=np.concatenate([x, x_nan[3:4]]))
    out = tmp_path / "metrics.json"
    assert run("--data", tmp_path / "samples.npz", "--reference", tmp_path / "train.npz", "--out", out,
               "--figures", tmp_path / "figs") == 0
    r = json.loads(out.read_text())
    assert r["kind"] == "positions" and r["n_failed"] == 1
    assert r["js_rel_dist"] == pytest.approx(0.0, abs=1e-12)
    assert r["atom_stability"] is None and r["validity"] is None
    assert any("positions only" in note for note in r["notes"])
    assert r["rel_dist"]["n_pairs_samples"] == 20 * 19 * 18
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["molecules_3d.png", "rel_dist_hist.png"]


def test_without_reference_and_figures(tmp_path: Path) -> None:
    samples = write_molecules(tmp_path / "s.npz", [methane(), water()])
    out = tmp_path / "m.json"
    assert run("--data", samples, "--out", out, "--no-figures") == 0
    r = json.loads(out.read_text())
    assert r["mol_stability"] == 1.0 and r["novelty"] is None and r["js_rel_dist"] is None
    assert "figures" not in r and sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "s.npz"]


@pytest.mark.parametrize("arrays, message", [
    (None, "data file not found"),
    ({"one_hot": np.zeros((2, 3, 5))}, "missing array"),
    ({"positions": np.zeros((2, 3))}, "'positions' must have shape"),
    ({"positions": np.zeros((2, 3, 3)), "one_hot": np.zeros((2, 3, 4))}, "'one_hot' must have shape"),
    ({"positions": np.zeros((2, 3, 3)), "atom_mask": np.ones((2, 4))}, "'atom_mask' must have shape"),
    ({"positions": np.zeros((2, 3, 3)), "failed": np.zeros(3, dtype=bool)}, "'failed' must have shape"),
    ({"positions": np.zeros((1, 2, 3)), "one_hot": np.zeros((1, 2, 5))}, "no positive entry"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], arrays: dict | None,
                                     message: str) -> None:
    data = tmp_path / "bad.npz"
    if arrays is not None:
        np.savez(data, **arrays)
    assert run("--data", data, "--out", tmp_path / "m.json") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(data) in err and "\n" not in err
    assert not (tmp_path / "m.json").exists()


def test_out_must_be_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = write_molecules(tmp_path / "s.npz", [methane()])
    assert run("--data", samples, "--out", tmp_path / "m.txt") == 2
    assert "--out" in capsys.readouterr().err


@pytest.fixture(scope="session")
def qm9_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real QM9 and QM9-positional splits, prepared once per session from the qm9pack tables."""
    from enf.data import qm9

    try:
        qm9.qm9pack_data_dir()
    except EnfError as err:
        pytest.skip(f"QM9 source unavailable: {err}")
    root = tmp_path_factory.mktemp("qm9_real")
    qm9.prepare_qm9(root / "qm9", log=lambda _: None)
    qm9.prepare_qm9(root / "qm9_positional", positional=True, log=lambda _: None)
    return {"qm9": root / "qm9", "qm9_positional": root / "qm9_positional"}


@pytest.mark.slow
def test_real_qm9_test_split_matches_the_papers_data_row(qm9_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Paper's Data row: 99% atom and 95.2% molecule stability; RDKit validity about 97.7% (EDM's data row)."""
    out = tmp_path / "qm9_test.json"
    assert run("--data", qm9_dirs["qm9"] / "test.npz", "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["n_molecules"] == 13_083 and r["n_failed"] == 0
    assert 0.990 <= r["atom_stability"] <= 0.998
    assert 0.947 <= r["mol_stability"] <= 0.957
    assert 0.97 <= r["validity"] <= 0.985
    assert r["connectivity"] > 0.999 and r["uniqueness"] > 0.999
    assert r["timings_s"]["stability"] < 30


@pytest.mark.slow
def test_real_qm9_positional_test_against_train(qm9_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Held-out 19-atom molecules against the training ones: a tiny JS, far below any model's."""
    out = tmp_path / "qm9pos.json"
    data = qm9_dirs["qm9_positional"]
    assert run("--data", data / "test.npz", "--reference", data / "train.npz", "--out", out, "--no-figures") == 0
    r = json.loads(out.read_text())
    assert r["n_molecules"] == 1_813 and r["rel_dist"]["n_reference_molecules"] == 13_832
    assert r["rel_dist"]["n_pairs_reference"] == 13_832 * 19 * 18
    assert 0 < r["js_rel_dist"] < 1e-3
