"""RDKit molecules from positions and atom types, and the validity, uniqueness and novelty of a set of molecules.

The build follows the EDM-style evaluation: one atom per real atom, a bond of the order given by the distance table
of `enf.evaluation.metrics.stability` for every bonded pair, then sanitisation of the largest fragment. Every SMILES
here is RDKit's canonical SMILES of the largest fragment, hydrogens implicit and without stereochemistry, so that SMILES
built from positions and SMILES read from the QM9 table can be compared.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from enf.errors import EnfError
from enf.evaluation.metrics.stability import DEFAULT_CHUNK, ELEMENTS, bond_orders

INSTALL_HINT = "install it with `pip install rdkit` (or `pip install -e '.[chem]'` in the enf checkout)"


@functools.cache
def require_rdkit() -> ModuleType:
    """Import rdkit.Chem on first use, with a clear error if RDKit is missing; silences RDKit's own logging."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError as err:
        raise EnfError(f"RDKit is needed for validity, uniqueness and novelty but cannot be imported ({err}); "
                       f"{INSTALL_HINT}") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem


def build_molecule(atom_types: np.ndarray, orders: np.ndarray) -> Any:
    """An unsanitised RDKit RWMol with one atom per type index and a bond for every pair of positive order."""
    Chem = require_rdkit()
    bond_type = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    mol = Chem.RWMol()
    for t in atom_types:
        mol.AddAtom(Chem.Atom(ELEMENTS[int(t)]))
    for i, j in zip(*np.nonzero(np.triu(orders, k=1))):
        mol.AddBond(int(i), int(j), bond_type[int(orders[i, j])])
    return mol


def largest_fragment(mol: Any) -> Any:
    """The fragment with the most atoms (unsanitised), or the molecule itself when it has one fragment."""
    Chem = require_rdkit()
    fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    return max(fragments, key=lambda frag: frag.GetNumAtoms()) if len(fragments) > 1 else Chem.Mol(mol)


def canonical_smiles(mol: Any) -> str | None:
    """Canonical SMILES (hydrogens implicit, no stereo) of a molecule after sanitisation; None if it fails."""
    Chem = require_rdkit()
    mol = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(mol)
        mol = Chem.RemoveHs(mol)
    except (ValueError, RuntimeError):  # RDKit's sanitisation errors derive from ValueError
        return None
    smiles = Chem.MolToSmiles(mol, isomericSmiles=False)
    return smiles or None


def canonicalise_smiles(smiles: str) -> str | None:
    """Canonical SMILES of a SMILES string in the same form as `canonical_smiles`; None if RDKit cannot read it."""
    Chem = require_rdkit()
    mol = Chem.MolFromSmiles(str(smiles))
    if mol is None:
        return None
    if len(Chem.GetMolFrags(mol)) > 1:
        mol = largest_fragment(mol)
    return Chem.MolToSmiles(mol, isomericSmiles=False) or None


@dataclass(frozen=True)
class BuiltMolecules:
    """Per-molecule outcome of the build: largest-fragment SMILES (None if invalid) and whether it was connected."""

    smiles: list[str | None]
    connected: np.ndarray  # (n,) bool, the bond graph has one fragment (False for failed molecules)
    molecules: list[Any]  # the sanitised largest fragments (hydrogens explicit), None where invalid

    @property
    def valid(self) -> np.ndarray:
        """(n,) bool: the largest fragment sanitises."""
        return np.array([s is not None for s in self.smiles], dtype=bool)


def build_molecules(positions: np.ndarray, atom_types: np.ndarray, atom_mask: np.ndarray,
                    failed: np.ndarray | None = None, keep_molecules: bool = False,
                    chunk: int = DEFAULT_CHUNK) -> BuiltMolecules:
    """Build every molecule of a padded batch; failed ones (NaN solves) are invalid and unconnected."""
    Chem = require_rdkit()
    n = len(positions)
    mask = np.asarray(atom_mask, dtype=bool)
    bad = np.zeros(n, dtype=bool) if failed is None else np.asarray(failed, dtype=bool)
    smiles: list[str | None] = [None] * n
    kept: list[Any] = [None] * n
    connected = np.zeros(n, dtype=bool)
    for start in range(0, n, chunk):
        orders = bond_orders(positions[start:start + chunk], atom_types[start:start + chunk],
                             mask[start:start + chunk])
        for offset, block_orders in enumerate(orders):
            k = start + offset
            real = np.flatnonzero(mask[k])
            if bad[k] or real.size == 0:
                continue
            mol = build_molecule(atom_types[k, real], block_orders[np.ix_(real, real)])
            n_fragments = len(Chem.GetMolFrags(mol))
            connected[k] = n_fragments == 1
            fragment = largest_fragment(mol) if n_fragments > 1 else mol
            smiles[k] = canonical_smiles(fragment)
            if keep_molecules and smiles[k] is not None:
                fragment = Chem.Mol(fragment)
                Chem.SanitizeMol(fragment)
                kept[k] = fragment
    return BuiltMolecules(smiles=smiles, connected=connected, molecules=kept)


def smiles_set(smiles: Iterable[str | None]) -> set[str]:
    """The distinct non-empty SMILES of an iterable (None entries, i.e. invalid molecules, dropped)."""
    return {s for s in smiles if s}


def dataset_smiles_set(smiles: Iterable[str]) -> tuple[set[str], int]:
    """Canonical forms of a table's SMILES (e.g. QM9's own column) and how many RDKit could not read."""
    canonical = [canonicalise_smiles(s) for s in smiles]
    return smiles_set(canonical), sum(c is None for c in canonical)


@dataclass(frozen=True)
class ChemistryResult:
    """Validity, connectivity, uniqueness and novelty with their counts (fractions None where undefined)."""

    n_molecules: int
    n_valid: int
    n_connected: int
    n_unique: int
    n_novel: int | None
    n_reference_smiles: int | None

    @property
    def validity(self) -> float:
        """Molecules whose largest fragment sanitises, over all molecules."""
        return self.n_valid / self.n_molecules

    @property
    def connectivity(self) -> float:
        """Molecules whose bond graph is one fragment, over all molecules."""
        return self.n_connected / self.n_molecules

    @property
    def uniqueness(self) -> float | None:
        """Distinct canonical SMILES among valid molecules, over valid molecules."""
        return self.n_unique / self.n_valid if self.n_valid else None

    @property
    def novelty(self) -> float | None:
        """Distinct valid SMILES absent from the reference set, over distinct valid SMILES."""
        if self.n_novel is None or not self.n_unique:
            return None
        return self.n_novel / self.n_unique


def chemistry_metrics(built: BuiltMolecules, reference_smiles: set[str] | None = None) -> ChemistryResult:
    """Validity, connectivity, uniqueness and (given reference SMILES) novelty of built molecules."""
    unique = smiles_set(built.smiles)
    return ChemistryResult(
        n_molecules=len(built.smiles), n_valid=int(built.valid.sum()), n_connected=int(built.connected.sum()),
        n_unique=len(unique),
        n_novel=None if reference_smiles is None else len(unique - reference_smiles),
        n_reference_smiles=None if reference_smiles is None else len(reference_smiles),
    )
