"""RDKit molecule building, validity, connectivity, uniqueness and novelty on hand-made molecules."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from test_stability import broken_methane, ethyne, methane, pad, water

from enf.errors import EnfError
from enf.evaluation.metrics import chemistry

pytest.importorskip("rdkit")
H, C = 0, 1


def pentavalent_carbon() -> tuple[np.ndarray, np.ndarray]:
    """C with five H at 1.09 A (trigonal bipyramid): unstable, and RDKit refuses it."""
    eq = [[np.cos(a), np.sin(a), 0.0] for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)]
    x = 1.09 * np.array([[0, 0, 0], *eq, [0, 0, 1], [0, 0, -1]])
    return x, np.array([C, H, H, H, H, H])


def test_smiles_of_hand_made_molecules() -> None:
    x, t, m = pad([methane(), water(), ethyne(), broken_methane(), pentavalent_carbon()])
    built = chemistry.build_molecules(x, t, m)
    assert built.smiles == ["C", "O", "C#C", "C", None]
    assert built.valid.tolist() == [True, True, True, True, False]
    assert built.connected.tolist() == [True, True, True, False, True]


def test_metrics_counts() -> None:
    """Two methanes, water, a broken methane (its CH3 fragment reads as methane) and a failed molecule."""
    x, t, m = pad([methane(), methane(), water(), broken_methane(), pentavalent_carbon(), methane()])
    failed = np.array([False, False, False, False, False, True])
    built = chemistry.build_molecules(x, t, m, failed=failed)
    result = chemistry.chemistry_metrics(built, reference_smiles={"C", "CC"})
    assert (result.n_molecules, result.n_valid, result.n_connected, result.n_unique) == (6, 4, 4, 2)
    assert result.validity == pytest.approx(4 / 6)
    assert result.connectivity == pytest.approx(4 / 6)
    assert result.uniqueness == pytest.approx(2 / 4)
    assert (result.n_novel, result.novelty) == (1, pytest.approx(0.5))  # "O" is new, "C" is not
    assert chemistry.chemistry_metrics(built).novelty is None


def test_kept_molecules_are_sanitised_largest_fragments() -> None:
    x, t, m = pad([broken_methane(), pentavalent_carbon()])
    built = chemistry.build_molecules(x, t, m, keep_molecules=True)
    assert built.molecules[0].GetNumAtoms() == 4 and built.molecules[1] is None


def test_canonicalise_dataset_smiles() -> None:
    """QM9's own SMILES: stereo dropped, the same canonical form as molecules built from positions."""
    assert chemistry.canonicalise_smiles("OCC") == chemistry.canonicalise_smiles("CCO") == "CCO"
    assert chemistry.canonicalise_smiles("C[C@H](N)O") == "CC(N)O"
    assert chemistry.canonicalise_smiles("not a smiles") is None
    found, unreadable = chemistry.dataset_smiles_set(["C", "C", "O", "xx"])
    assert (found, unreadable) == ({"C", "O"}, 1)


def test_rigid_motions_do_not_change_the_smiles() -> None:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    x, t = methane()
    x_rot = x @ q.T + 2.0
    built = chemistry.build_molecules(np.stack([x, x_rot]), np.stack([t, t]), np.ones((2, 5), dtype=bool))
    assert built.smiles == ["C", "C"]


def test_missing_rdkit_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    chemistry.require_rdkit.cache_clear()
    monkeypatch.setitem(sys.modules, "rdkit", None)
    try:
        with pytest.raises(EnfError, match="pip install rdkit"):
            chemistry.require_rdkit()
    finally:
        chemistry.require_rdkit.cache_clear()
