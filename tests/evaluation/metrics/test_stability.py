"""Bond orders and atom/molecule stability on hand-made molecules with known answers, and speed on a large batch."""

from __future__ import annotations

import time

import numpy as np
import pytest

from enf.errors import EnfError
from enf.evaluation.metrics.stability import (
    BOND_LENGTHS_PM,
    ELEMENTS,
    MARGINS_PM,
    VALENCES,
    bond_orders,
    check_stability,
)

H, C, N, O, F = range(5)
TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)


def methane() -> tuple[np.ndarray, np.ndarray]:
    """CH4 with C-H 1.09 A (H-H 1.78 A: no bond)."""
    return np.vstack([np.zeros(3), 1.09 * TETRAHEDRON]), np.array([C, H, H, H, H])


def water() -> tuple[np.ndarray, np.ndarray]:
    """H2O with O-H 0.96 A and an angle of 104.5 degrees."""
    half = np.deg2rad(104.5) / 2
    return np.array([[0, 0, 0], [0.96 * np.sin(half), 0.96 * np.cos(half), 0],
                     [-0.96 * np.sin(half), 0.96 * np.cos(half), 0]]), np.array([O, H, H])


def broken_methane() -> tuple[np.ndarray, np.ndarray]:
    """Methane with one hydrogen pulled 5 A away: C has 3 bonds, the far H none."""
    x, t = methane()
    x[4] *= 5.0 / 1.09
    return x, t


def ethyne() -> tuple[np.ndarray, np.ndarray]:
    """HC#CH, C-C 1.20 A (triple), C-H 1.06 A."""
    return np.array([[-0.6, 0, 0], [0.6, 0, 0], [-1.66, 0, 0], [1.66, 0, 0]]), np.array([C, C, H, H])


def ethene() -> tuple[np.ndarray, np.ndarray]:
    """H2C=CH2, C-C 1.33 A (double), C-H 1.09 A at 121.5 degrees."""
    a = np.deg2rad(180 - 121.5)
    dx, dy = 1.09 * np.cos(a), 1.09 * np.sin(a)
    x = np.array([[-0.665, 0, 0], [0.665, 0, 0], [-0.665 - dx, dy, 0], [-0.665 - dx, -dy, 0],
                  [0.665 + dx, dy, 0], [0.665 + dx, -dy, 0]])
    return x, np.array([C, C, H, H, H, H])


def pad(molecules: list[tuple[np.ndarray, np.ndarray]], n_max: int = 6) -> tuple[np.ndarray, ...]:
    """Stack molecules into a padded batch (positions, types, mask); padding sits at the origin, type H."""
    n = len(molecules)
    x, t, m = np.zeros((n, n_max, 3)), np.zeros((n, n_max), dtype=int), np.zeros((n, n_max), dtype=bool)
    for k, (pos, types) in enumerate(molecules):
        x[k, :len(pos)], t[k, :len(pos)], m[k, :len(pos)] = pos, types, True
    return x, t, m


@pytest.mark.parametrize("make", [methane, water, ethyne, ethene])
def test_hand_made_molecules_are_stable(make) -> None:
    x, t = make()
    result = check_stability(x[None], t[None])
    assert result.n_stable_atoms == result.n_atoms == len(t)
    assert result.mol_stable.tolist() == [True]


def test_known_bond_orders() -> None:
    x, t = ethyne()
    orders = bond_orders(x, t)
    assert orders[0, 1] == 3 and orders[0, 2] == 1 and orders[1, 3] == 1 and orders[2, 3] == 0
    x, t = ethene()
    assert bond_orders(x, t)[0, 1] == 2
    assert (np.diag(bond_orders(*methane())) == 0).all()


def test_broken_molecule_counts() -> None:
    """Methane, water and a broken methane: 11 of 13 atoms and 2 of 3 molecules stable."""
    x, t, m = pad([methane(), water(), broken_methane()])
    result = check_stability(x, t, m)
    assert result.valence_sums[2, :5].tolist() == [3, 1, 1, 1, 0]
    assert result.atom_stable[2, :5].tolist() == [False, True, True, True, False]
    assert (result.n_stable_atoms, result.n_atoms) == (11, 13)
    assert (result.n_stable_molecules, result.n_molecules) == (2, 3)
    assert result.mol_stable.tolist() == [True, True, False]
    assert result.atom_stability == pytest.approx(11 / 13)
    assert result.mol_stability == pytest.approx(2 / 3)


def test_failed_and_nan_molecules_count_as_unstable() -> None:
    x, t, m = pad([methane(), methane(), water()])
    x[2, 1] = np.nan  # a NaN solve: failed even without the flag
    result = check_stability(x, t, m, failed=np.array([False, True, False]))
    assert result.mol_stable.tolist() == [True, False, False]
    assert result.atom_stable[1:].sum() == 0
    assert (result.n_stable_atoms, result.n_atoms) == (5, 13)


def test_margins_at_the_single_bond_edge() -> None:
    """C-C: bond order 1 just inside 154 + 10 pm, 0 just outside; 2 just inside 134 + 5, 3 inside 120 + 3."""
    t = np.array([C, C])
    for d, expected in [(1.635, 1), (1.645, 0), (1.385, 2), (1.395, 1), (1.225, 3), (1.235, 2)]:
        assert bond_orders(np.array([[0, 0, 0], [d, 0, 0]]), t)[0, 1] == expected, d


def _loop_bond_orders(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Plain reading of the protocol's rule, one pair at a time, to check the vectorised version against."""
    n = len(t)
    out = np.zeros((n, n), dtype=int)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            lengths = BOND_LENGTHS_PM.get((ELEMENTS[t[i]], ELEMENTS[t[j]])) or BOND_LENGTHS_PM[
                (ELEMENTS[t[j]], ELEMENTS[t[i]])]
            d = 100 * np.linalg.norm(x[i] - x[j])
            order = 0
            if d < lengths[0] + MARGINS_PM[0]:
                order = 1
                if len(lengths) > 1 and d < lengths[1] + MARGINS_PM[1]:
                    order = 2
                    if len(lengths) > 2 and d < lengths[2] + MARGINS_PM[2]:
                        order = 3
            out[i, j] = order
    return out


def test_vectorised_orders_match_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 3.0, size=(40, 9, 3))
    t = rng.integers(0, 5, size=(40, 9))
    m = np.arange(9)[None] < rng.integers(1, 10, size=40)[:, None]
    orders = bond_orders(x, t, m)
    for k in range(40):
        real = np.flatnonzero(m[k])
        expected = _loop_bond_orders(x[k, real], t[k, real])
        assert (orders[k][np.ix_(real, real)] == expected).all()
        assert (orders[k][~m[k]] == 0).all() and (orders[k][:, ~m[k]] == 0).all()
    result = check_stability(x, t, m, chunk=7)  # chunking must not change anything
    sums = np.array([[_loop_bond_orders(x[k], t[k])[i][m[k]].sum() if m[k, i] else 0 for i in range(9)]
                     for k in range(40)])
    assert (result.valence_sums == sums).all()
    assert (result.atom_stable == (m & (sums == VALENCES[t]))).all()


def test_ten_thousand_molecules_well_under_a_minute() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(scale=2.0, size=(10_000, 29, 3))
    t = rng.integers(0, 5, size=(10_000, 29))
    m = np.arange(29)[None] < rng.integers(10, 30, size=10_000)[:, None]
    start = time.perf_counter()
    result = check_stability(x, t, m)
    assert time.perf_counter() - start < 30.0
    assert result.n_atoms == m.sum()


def test_bad_input_is_refused() -> None:
    x, t = methane()
    with pytest.raises(EnfError, match="type index 7"):
        check_stability(x[None], np.array([[C, H, H, 7, H]]))
    with pytest.raises(EnfError, match="shape"):
        check_stability(x, t)
    with pytest.raises(EnfError, match="atom types"):
        check_stability(x[None], t[None, :3])
    with pytest.raises(EnfError, match="failed"):
        check_stability(x[None], t[None], failed=np.zeros(3, dtype=bool))
