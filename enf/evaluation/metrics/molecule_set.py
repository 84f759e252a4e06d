"""A set of molecules read from an .npz in the QM9 data format (or positions only, as in QM9-positional), checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from enf.errors import EnfError
from enf.evaluation.metrics.stability import ELEMENTS
from enf.io import load_npz


@dataclass(frozen=True)
class MoleculeSet:
    """A padded batch of molecules read from one .npz file, checked, with failed molecules flagged."""

    path: Path
    positions: np.ndarray  # (n, A, 3) float64 Angstrom; zeros at padding and where failed
    atom_mask: np.ndarray  # (n, A) bool
    atom_types: np.ndarray | None  # (n, A) int64 indices into ELEMENTS; None for positions-only data
    failed: np.ndarray  # (n,) bool: flagged by the sampler, non-finite, or without atoms
    n_flagged: int  # molecules the file's `failed` array marks
    smiles: np.ndarray | None  # (n,) str, the table's own SMILES when the file has them

    @property
    def n_molecules(self) -> int:
        """Number of molecules, failed ones included."""
        return len(self.positions)

    @property
    def n_atoms(self) -> np.ndarray:
        """(n,) real atoms per molecule."""
        return self.atom_mask.sum(axis=1)


def _shape_error(path: Path, key: str, expected: str, array: np.ndarray) -> EnfError:
    return EnfError(f"{path}: array '{key}' must have shape {expected}, got {array.shape}")


def load_molecule_set(path: str | Path) -> MoleculeSet:
    """Read an .npz of molecules (`positions` required; `atom_mask`/`num_atoms`, `one_hot`, `failed`, `smiles`)."""
    path = Path(path)
    arrays = load_npz(path, required=("positions",))
    positions = arrays["positions"]
    if positions.ndim != 3 or positions.shape[2] != 3 or positions.shape[0] == 0:
        raise _shape_error(path, "positions", "(molecules >= 1, atoms, 3)", positions)
    if not np.issubdtype(positions.dtype, np.number):
        raise EnfError(f"{path}: array 'positions' must be numeric, got dtype {positions.dtype}")
    n, n_max = positions.shape[:2]
    positions = positions.astype(np.float64)

    if "atom_mask" in arrays:
        mask = arrays["atom_mask"]
        if mask.shape != (n, n_max):
            raise _shape_error(path, "atom_mask", f"({n}, {n_max})", mask)
        mask = mask.astype(bool)
    elif "num_atoms" in arrays:
        num = arrays["num_atoms"]
        if num.shape != (n,) or (num < 0).any() or (num > n_max).any():
            raise EnfError(f"{path}: array 'num_atoms' must have shape ({n},) with values in 0..{n_max}, "
                           f"got shape {num.shape}, range {num.min()}..{num.max()}")
        mask = np.arange(n_max)[None, :] < num[:, None]
    else:
        mask = np.ones((n, n_max), dtype=bool)

    flagged = np.zeros(n, dtype=bool)
    if "failed" in arrays:
        if arrays["failed"].shape != (n,):
            raise _shape_error(path, "failed", f"({n},)", arrays["failed"])
        flagged = arrays["failed"].astype(bool)
    failed = flagged | ~mask.any(axis=1)
    failed |= ~np.where(mask[:, :, None], np.isfinite(positions), True).all(axis=(1, 2))

    atom_types = None
    if "one_hot" in arrays:
        one_hot = arrays["one_hot"]
        if one_hot.shape != (n, n_max, len(ELEMENTS)):
            raise _shape_error(path, "one_hot", f"({n}, {n_max}, {len(ELEMENTS)}) over {ELEMENTS}", one_hot)
        one_hot = one_hot.astype(np.float64)
        failed |= ~np.where(mask[:, :, None], np.isfinite(one_hot), True).all(axis=(1, 2))
        one_hot = np.where(failed[:, None, None], 0.0, one_hot)
        empty = mask & ~failed[:, None] & (one_hot.max(axis=2) <= 0)
        if empty.any():
            mol, atom = np.argwhere(empty)[0]
            raise EnfError(f"{path}: array 'one_hot' has no positive entry for real atom {atom} of molecule {mol} "
                           f"({int(empty.sum())} such atoms)")
        atom_types = one_hot.argmax(axis=2).astype(np.int64)

    smiles = None
    if "smiles" in arrays:
        if arrays["smiles"].shape != (n,):
            raise _shape_error(path, "smiles", f"({n},)", arrays["smiles"])
        smiles = arrays["smiles"].astype(str)

    positions = np.where(failed[:, None, None] | ~mask[:, :, None], 0.0, positions)
    return MoleculeSet(path=path, positions=positions, atom_mask=mask, atom_types=atom_types, failed=failed,
                       n_flagged=int(flagged.sum()), smiles=smiles)
