"""QM9: the exact Cormorant split, CSV parsing, validated loading, refusals; the full preparation (slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from enf.data import qm9
from enf.data.qm9 import (
    EXPECTED_19_ATOMS,
    EXPECTED_SIZES,
    cormorant_split,
    load_qm9_split,
    prepare_qm9,
    read_qm9,
    split_arrays,
)
from enf.errors import EnfError
from enf.io import save_npz

HEADER = ("XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Dipole_debye\n")
MOLECULES = {   # index: (smiles, elements, coordinates) -- written out of order on purpose
    3: ("O", ["O", "H", "H"], [[0.0, 0.0, 0.1], [0.8, 0.0, -0.5], [-0.8, 0.0, -0.5]]),
    1: ("C", ["C", "H", "H", "H", "H"], [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.4, 0.0], [-0.5, 1.4, -0.9],
                                          [-0.5, 1.4, 0.9]]),
    7: ("CF", ["C", "F", "N", "H"], [[1.0, 2.0, 3.0], [2.0, 2.0, 3.0], [1.0, 3.0, 3.0], [1.0, 2.0, 4.0]]),
}


def _row(index: int) -> str:
    smiles, elements, xyz = MOLECULES[index]
    el = "[" + ",".join(f"'{e}'" for e in elements) + "]"
    coords = "[" + ",".join("[" + ",".join(repr(v) for v in c) + "]" for c in xyz) + "]"
    return (f'"dsgdb9nsd_{index:06d}.xyz",{index},"{smiles}","InChI=x",{len(elements)},"[1,0,0,0,0]",'
            f'"{el}","{coords}","[0.1]",0.5\n')


def _write_source(folder: Path, rows: tuple[tuple[int, ...], ...] = ((3,), (1,), (7,))) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(rows, start=1):
        (folder / f"qm9_part{i}.csv").write_text(HEADER + "".join(_row(k) for k in part))
    return folder


def test_cormorant_split_sizes_order_and_disjointness() -> None:
    rows = cormorant_split(130_831)
    assert {s: r.size for s, r in rows.items()} == EXPECTED_SIZES
    union = np.concatenate(list(rows.values()))
    assert np.unique(union).size == 130_831 and union.min() == 0 and union.max() == 130_830
    assert all((np.diff(r) > 0).all() for r in rows.values())          # each split in ascending GDB9 order
    np.random.seed(0)                                                  # the recipe, literally
    perm = np.random.permutation(130_831)
    assert np.array_equal(rows["test"], np.sort(perm[117_748:]))
    with pytest.raises(EnfError, match="cannot make"):
        cormorant_split(1000)


def test_parse_sorts_pads_and_centres(tmp_path: Path) -> None:
    data = read_qm9(_write_source(tmp_path / "src"))
    assert data["index"].tolist() == [1, 3, 7]
    assert data["smiles"].tolist() == ["C", "O", "CF"]
    assert data["num_atoms"].tolist() == [5, 3, 4]
    assert data["charges"].shape == (3, 29) and data["charges"][2, :5].tolist() == [6, 9, 7, 1, 0]
    pos = data["positions"]
    assert pos.shape == (3, 29, 3) and (pos[2, 4:] == 0).all()
    mask = data["charges"] > 0
    assert np.abs((pos * mask[..., None]).sum(1)).max() < 1e-12        # centred over real atoms
    np.testing.assert_allclose(pos[2, 1] - pos[2, 0], [1.0, 0.0, 0.0])  # geometry kept
    arrays = split_arrays(data, np.array([0, 2]), positional=False)
    assert arrays["one_hot"][1, :4].argmax(-1).tolist() == [1, 4, 2, 0]  # C F N H over (H, C, N, O, F)
    assert arrays["smiles"].dtype.kind == "U"
    save_npz(tmp_path / "s.npz", **arrays)
    loaded = load_qm9_split(tmp_path / "s.npz")
    assert loaded["num_atoms"].tolist() == [5, 4]


def test_source_with_the_wrong_molecule_count_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(EnfError, match="needs exactly 130,831"):
        prepare_qm9(out, source=_write_source(tmp_path / "src"), log=lambda _m: None)
    assert not out.exists() or not any(out.iterdir())                 # nothing half-written


def test_corrupt_or_missing_source_is_refused(tmp_path: Path) -> None:
    src = _write_source(tmp_path / "src")
    text = (src / "qm9_part2.csv").read_text()
    (src / "qm9_part2.csv").write_text(text[: len(text) // 2])        # truncated mid-row
    with pytest.raises(EnfError, match="qm9_part2.csv"):
        read_qm9(src)
    (src / "qm9_part3.csv").unlink()
    with pytest.raises(EnfError, match="not found"):
        read_qm9(src)
    bad = _write_source(tmp_path / "bad")
    (bad / "qm9_part1.csv").write_text(HEADER + _row(3).replace("'O'", "'X'"))
    with pytest.raises(EnfError, match="unknown element"):
        read_qm9(bad)


def test_missing_qm9pack_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(EnfError, match="pip install qm9pack"):
        qm9.qm9pack_data_dir()


def test_loader_refuses_bad_arrays(tmp_path: Path) -> None:
    data = read_qm9(_write_source(tmp_path / "src"))
    good = split_arrays(data, np.arange(3), positional=False)
    cases = {
        "NaN": {**good, "positions": np.where(np.arange(29)[None, :, None] == 0, np.nan, good["positions"])},
        "disagree": {**good, "num_atoms": good["num_atoms"] + 1},
        "centred": {**good, "positions": good["positions"] + good["atom_mask"][..., None]},
        "one_hot": {**good, "charges": good["charges"] * 2},
    }
    for match, arrays in cases.items():
        save_npz(tmp_path / "bad.npz", **arrays)
        with pytest.raises(EnfError, match=match):
            load_qm9_split(tmp_path / "bad.npz")
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "bad.npz").read_bytes()[:100])
    with pytest.raises(EnfError, match="corrupt or truncated"):
        load_qm9_split(tmp_path / "trunc.npz")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack is not installed")
    root = tmp_path_factory.mktemp("qm9")
    prepare_qm9(root / "qm9", log=lambda _m: None)
    prepare_qm9(root / "qm9_positional", positional=True, log=lambda _m: None)
    return {"qm9": root / "qm9", "qm9_positional": root / "qm9_positional"}


@pytest.mark.slow
def test_full_qm9_reproduces_the_cormorant_split(prepared: dict[str, Path]) -> None:
    indices = {}
    for split, size in EXPECTED_SIZES.items():
        arrays = load_qm9_split(prepared["qm9"] / f"{split}.npz")
        assert arrays["positions"].shape == (size, 29, 3)
        assert int((arrays["num_atoms"] == 19).sum()) == EXPECTED_19_ATOMS[split]
        assert arrays["smiles"].dtype.kind == "U" and arrays["smiles"].shape == (size,)
        indices[split] = arrays["index"]
        positional = load_qm9_split(prepared["qm9_positional"] / f"{split}.npz", positional=True)
        assert positional["positions"].shape == (EXPECTED_19_ATOMS[split], 19, 3)
    everything = np.concatenate(list(indices.values()))
    assert np.unique(everything).size == 130_831 and everything.max() == 133_885
    messages: list[str] = []
    prepare_qm9(prepared["qm9"], log=messages.append)                  # same arguments: reused, says so
    assert any("reusing" in m for m in messages)
