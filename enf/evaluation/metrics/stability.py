"""Bond orders from interatomic distances, and atom and molecule stability of QM9-like molecules (vectorised).

The rule of the E-NF paper (protocol section 3): a pair's bond order comes from its distance in pm against tables of
single, double and triple bond lengths with margins of 10, 5 and 3 pm; an atom is stable when its bond orders sum
to exactly its valence. Everything here works on padded batches: positions (n, A, 3) in Angstrom, atom types
(n, A) as indices into ELEMENTS, and a boolean atom mask (n, A) that marks the real atoms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from enf.errors import EnfError
from enf.geometry import pair_distances

ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")
VALENCES: np.ndarray = np.array([1, 4, 3, 2, 1], dtype=np.int64)
MARGINS_PM: tuple[float, float, float] = (10.0, 5.0, 3.0)

# Typical bond lengths in pm (single, double, triple) per element pair; absent orders do not exist for that pair.
BOND_LENGTHS_PM: dict[tuple[str, str], tuple[float, ...]] = {
    ("H", "H"): (74,), ("H", "C"): (109,), ("H", "N"): (101,), ("H", "O"): (96,), ("H", "F"): (92,),
    ("C", "C"): (154, 134, 120), ("C", "N"): (147, 129, 116), ("C", "O"): (143, 120, 113), ("C", "F"): (135,),
    ("N", "N"): (145, 125, 110), ("N", "O"): (140, 121), ("N", "F"): (136,),
    ("O", "O"): (148, 121), ("O", "F"): (142,),
    ("F", "F"): (142,),
}

# Molecules per vectorised block: bounds memory at about chunk * A * A * 8 bytes per temporary.
DEFAULT_CHUNK = 2048


def _threshold_tables() -> np.ndarray:
    """(3, 5, 5) thresholds in Angstrom, length + margin per bond order; -inf where the order does not exist."""
    tables = np.full((3, len(ELEMENTS), len(ELEMENTS)), -np.inf)
    for (a, b), lengths in BOND_LENGTHS_PM.items():
        i, j = ELEMENTS.index(a), ELEMENTS.index(b)
        for order, (length, margin) in enumerate(zip(lengths, MARGINS_PM)):
            tables[order, i, j] = tables[order, j, i] = (length + margin) / 100.0
    return tables


THRESHOLDS_A: np.ndarray = _threshold_tables()


def check_atom_types(atom_types: np.ndarray, atom_mask: np.ndarray, where: str = "atom types") -> None:
    """Refuse atom-type indices outside ELEMENTS on real atoms, naming the first culprit."""
    bad = atom_mask & ((atom_types < 0) | (atom_types >= len(ELEMENTS)))
    if bad.any():
        mol, atom = np.argwhere(bad)[0]
        raise EnfError(f"{where}: molecule {mol}, atom {atom} has type index {atom_types[mol, atom]}, "
                       f"outside 0..{len(ELEMENTS) - 1} ({', '.join(ELEMENTS)})")


def bond_orders(positions: np.ndarray, atom_types: np.ndarray, atom_mask: np.ndarray | None = None) -> np.ndarray:
    """(n, A, A) int8 bond orders 0..3 from distances; zero on the diagonal, at padding and at NaN distances."""
    positions = np.asarray(positions)
    if positions.ndim == 2:  # a single molecule
        return bond_orders(positions[None], np.asarray(atom_types)[None],
                           None if atom_mask is None else np.asarray(atom_mask)[None])[0]
    types = np.asarray(atom_types, dtype=np.int64)
    mask = np.ones(types.shape, dtype=bool) if atom_mask is None else np.asarray(atom_mask, dtype=bool)
    check_atom_types(types, mask)
    types = np.where(mask, types, 0)  # padding gets a harmless index; its pairs are masked below
    dist = pair_distances(positions, matrix=True)
    ti, tj = types[:, :, None], types[:, None, :]
    single, double, triple = (THRESHOLDS_A[k][ti, tj] for k in range(3))
    with np.errstate(invalid="ignore"):  # NaN distances compare False: no bond
        orders = np.where(dist < single, np.where(dist < double, np.where(dist < triple, 3, 2), 1), 0)
    pair_mask = mask[:, :, None] & mask[:, None, :]
    pair_mask &= ~np.eye(types.shape[1], dtype=bool)[None]
    return np.where(pair_mask, orders, 0).astype(np.int8)


@dataclass(frozen=True)
class StabilityResult:
    """Per-atom and per-molecule stability of a batch, with the counts behind the two fractions."""

    atom_stable: np.ndarray  # (n, A) bool, False at padding
    mol_stable: np.ndarray  # (n,) bool
    valence_sums: np.ndarray  # (n, A) int, sum of bond orders per atom (0 at padding)
    n_atoms: int
    n_stable_atoms: int
    n_molecules: int
    n_stable_molecules: int

    @property
    def atom_stability(self) -> float:
        """Stable atoms over all real atoms (failed molecules' atoms count as unstable)."""
        return self.n_stable_atoms / self.n_atoms if self.n_atoms else float("nan")

    @property
    def mol_stability(self) -> float:
        """Molecules whose every atom is stable, over all molecules."""
        return self.n_stable_molecules / self.n_molecules if self.n_molecules else float("nan")


def check_stability(positions: np.ndarray, atom_types: np.ndarray, atom_mask: np.ndarray | None = None,
                    failed: np.ndarray | None = None, chunk: int = DEFAULT_CHUNK) -> StabilityResult:
    """Atom and molecule stability of a padded batch; failed, empty or non-finite molecules count as unstable."""
    positions = np.asarray(positions)
    types = np.asarray(atom_types)
    if positions.ndim != 3 or positions.shape[2] != 3:
        raise EnfError(f"positions must have shape (molecules, atoms, 3), got {positions.shape}")
    n, n_max = positions.shape[:2]
    if types.shape != (n, n_max):
        raise EnfError(f"atom types must have shape {(n, n_max)} to match positions, got {types.shape}")
    mask = np.ones((n, n_max), dtype=bool) if atom_mask is None else np.asarray(atom_mask, dtype=bool)
    if mask.shape != (n, n_max):
        raise EnfError(f"atom mask must have shape {(n, n_max)} to match positions, got {mask.shape}")
    bad = np.zeros(n, dtype=bool) if failed is None else np.asarray(failed, dtype=bool).copy()
    if bad.shape != (n,):
        raise EnfError(f"failed flags must have shape {(n,)}, got {bad.shape}")
    check_atom_types(types, mask)
    bad |= ~mask.any(axis=1)
    bad |= ~np.where(mask[:, :, None], np.isfinite(positions), True).all(axis=(1, 2))

    sums = np.zeros((n, n_max), dtype=np.int64)
    for start in range(0, n, chunk):
        block = slice(start, start + chunk)
        sums[block] = bond_orders(positions[block], types[block], mask[block]).sum(axis=2, dtype=np.int64)
    valence = VALENCES[np.where(mask, types, 0)]
    atom_stable = mask & (sums == valence) & ~bad[:, None]
    mol_stable = (atom_stable == mask).all(axis=1) & ~bad
    return StabilityResult(
        atom_stable=atom_stable, mol_stable=mol_stable, valence_sums=np.where(mask, sums, 0),
        n_atoms=int(mask.sum()), n_stable_atoms=int(atom_stable.sum()),
        n_molecules=n, n_stable_molecules=int(mol_stable.sum()),
    )
