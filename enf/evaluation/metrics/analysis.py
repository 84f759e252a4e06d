"""Sample-quality metrics of a molecule set: stability, RDKit validity/uniqueness/novelty, JS(rel. dist), figures.

`analyze` computes every metric that the data allow and returns a JSON-ready dict; `write_figures` draws them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from enf.errors import EnfError
from enf.evaluation.metrics.distances import MAX_DIST, N_BINS, js_divergence, rel_dist_histogram
from enf.evaluation.metrics.molecule_set import MoleculeSet
from enf.evaluation.metrics.stability import bond_orders, check_stability

GRID_2D_MAX = 16
VIEWS_3D = 6


def _fraction(num: int, den: int) -> float | None:
    return num / den if den else None


def analyze(samples: MoleculeSet, reference: MoleculeSet | None = None,
            novelty_from: str = "both") -> tuple[dict[str, Any], dict[str, Any]]:
    """Every metric the data allow, as a JSON-ready dict, plus the arrays that `write_figures` draws from.

    novelty_from: 'positions' (reference SMILES built from the reference positions by the same pipeline as the
    samples: the conventional novelty), 'smiles' (the reference file's own SMILES column, canonicalised), or 'both'.
    """
    if novelty_from not in ("positions", "smiles", "both"):
        raise EnfError(f"novelty_from must be 'positions', 'smiles' or 'both', got {novelty_from!r}")
    timings: dict[str, float] = {}
    notes: list[str] = []
    n = samples.n_molecules
    result: dict[str, Any] = {
        "kind": "molecules" if samples.atom_types is not None else "positions",
        "n_molecules": n, "n_failed": int(samples.failed.sum()), "n_failed_flagged": samples.n_flagged,
        "n_atoms_total": int(samples.atom_mask.sum()),
        "atom_stability": None, "n_stable_atoms": None, "mol_stability": None, "n_stable_molecules": None,
        "validity": None, "n_valid": None, "connectivity": None, "n_connected": None,
        "uniqueness": None, "n_unique": None,
        "novelty": None, "n_novel": None, "novelty_reference": None, "n_reference_smiles": None,
        "novelty_vs_dataset_smiles": None, "n_novel_vs_dataset_smiles": None, "n_reference_dataset_smiles": None,
        "js_rel_dist": None,
    }
    extras: dict[str, Any] = {"samples": samples}
    if result["n_failed"]:
        notes.append(f"{result['n_failed']} failed molecule(s) (sampler flag, non-finite values or no atoms) count "
                     "as unstable, invalid and unconnected, and add no distances to the histogram")

    if samples.atom_types is None:
        notes.append("positions only (no one_hot): only the relative-distance metrics are computed")
    else:
        start = time.perf_counter()
        stab = check_stability(samples.positions, samples.atom_types, samples.atom_mask, samples.failed)
        timings["stability"] = time.perf_counter() - start
        result.update(atom_stability=stab.atom_stability, n_stable_atoms=stab.n_stable_atoms,
                      mol_stability=stab.mol_stability, n_stable_molecules=stab.n_stable_molecules)
        extras["stability"] = stab
        _chemistry(samples, reference, novelty_from, result, extras, notes, timings)

    if reference is None:
        notes.append("no reference given: no novelty and no JS divergence")
        start = time.perf_counter()
        extras["sample_hist"] = rel_dist_histogram(samples.positions, samples.atom_mask & ~samples.failed[:, None])
        timings["rel_dist"] = time.perf_counter() - start
    else:
        start = time.perf_counter()
        _rel_dist(samples, reference, result, extras, notes)
        timings["rel_dist"] = time.perf_counter() - start
    result["timings_s"] = {key: round(value, 3) for key, value in timings.items()}
    result["notes"] = notes
    return result, extras


def _chemistry(samples: MoleculeSet, reference: MoleculeSet | None, novelty_from: str, result: dict[str, Any],
               extras: dict[str, Any], notes: list[str], timings: dict[str, float]) -> None:
    """Validity, connectivity, uniqueness and novelty into `result` (RDKit is imported here, not before)."""
    from enf.evaluation.metrics import chemistry

    chemistry.require_rdkit()
    start = time.perf_counter()
    built = chemistry.build_molecules(samples.positions, samples.atom_types, samples.atom_mask, samples.failed)
    timings["rdkit_build"] = time.perf_counter() - start
    extras["built"] = built
    n = samples.n_molecules
    unique = chemistry.smiles_set(built.smiles)
    n_valid = int(built.valid.sum())
    result.update(validity=n_valid / n, n_valid=n_valid, connectivity=float(built.connected.mean()),
                  n_connected=int(built.connected.sum()), uniqueness=_fraction(len(unique), n_valid),
                  n_unique=len(unique))
    if reference is None:
        return

    if novelty_from in ("positions", "both"):
        if reference.atom_types is None:
            notes.append(f"{reference.path} has no one_hot: novelty from reference positions not computed")
        else:
            start = time.perf_counter()
            ref_built = chemistry.build_molecules(reference.positions, reference.atom_types, reference.atom_mask,
                                                  reference.failed)
            ref_set = chemistry.smiles_set(ref_built.smiles)
            timings["rdkit_build_reference"] = time.perf_counter() - start
            novel = len(unique - ref_set)
            result.update(novelty=_fraction(novel, len(unique)), n_novel=novel, n_reference_smiles=len(ref_set),
                          novelty_reference="reference positions, same build pipeline as the samples")
    if novelty_from in ("smiles", "both"):
        if reference.smiles is None:
            notes.append(f"{reference.path} has no smiles array: novelty against the dataset SMILES not computed")
        else:
            start = time.perf_counter()
            data_set, n_unreadable = chemistry.dataset_smiles_set(reference.smiles)
            timings["canonicalise_reference_smiles"] = time.perf_counter() - start
            novel = len(unique - data_set)
            result.update(novelty_vs_dataset_smiles=_fraction(novel, len(unique)), n_novel_vs_dataset_smiles=novel,
                          n_reference_dataset_smiles=len(data_set))
            if n_unreadable:
                notes.append(f"{n_unreadable} reference SMILES could not be read by RDKit")
            if result["novelty"] is None:
                result["novelty"], result["n_novel"] = result["novelty_vs_dataset_smiles"], novel
                result["n_reference_smiles"] = len(data_set)
                result["novelty_reference"] = "reference file's smiles array, canonicalised"


def _rel_dist(samples: MoleculeSet, reference: MoleculeSet, result: dict[str, Any], extras: dict[str, Any],
              notes: list[str]) -> None:
    """Relative-distance histograms of samples and reference, and their JS divergence, into `result`."""
    sizes = np.unique(samples.n_atoms[~samples.failed])
    ref_keep = ~reference.failed
    if samples.atom_types is None and len(sizes) == 1 and (reference.n_atoms[ref_keep] != sizes[0]).any():
        ref_keep &= reference.n_atoms == sizes[0]
        notes.append(f"reference restricted to its {int(ref_keep.sum())} molecules of {int(sizes[0])} atoms, "
                     "the size of every sample")
    sample_hist = rel_dist_histogram(samples.positions, samples.atom_mask & ~samples.failed[:, None])
    ref_hist = rel_dist_histogram(reference.positions, reference.atom_mask & ref_keep[:, None])
    extras.update(sample_hist=sample_hist, reference_hist=ref_hist)
    rel = {"n_bins": N_BINS, "range_angstrom": [0.0, MAX_DIST], "n_pairs_samples": int(sample_hist.sum()),
           "n_pairs_reference": int(ref_hist.sum()), "n_reference_molecules": int(ref_keep.sum()),
           "pairs": "ordered pairs i != j of real atoms; distances >= 13 A in the last bin; +1e-10 per bin"}
    result["rel_dist"] = rel
    if sample_hist.sum() == 0 or ref_hist.sum() == 0:
        notes.append("no distances in the samples or the reference: JS divergence undefined")
        return
    result["js_rel_dist"] = js_divergence(sample_hist, ref_hist)
    if samples.atom_types is not None:
        notes.append("js_rel_dist on molecules of mixed sizes pools all pairs (the paper's JS is for 19-atom "
                     "QM9-positional data)")


#: The pictures `write_figures` may draw (which ones depends on the data).
FIGURE_FILES = ("molecules_grid_2d.png", "molecules_3d.png", "rel_dist_hist.png")


def write_figures(extras: dict[str, Any], result: dict[str, Any], figures_dir: str | Path) -> dict[str, str]:
    """Draw molecules_grid_2d.png, molecules_3d.png and rel_dist_hist.png as the data allow; returns their paths."""
    from enf.evaluation.metrics import figures

    figures_dir = Path(figures_dir)
    samples: MoleculeSet = extras["samples"]
    written: dict[str, str] = {}
    ok = np.flatnonzero(~samples.failed)

    built = extras.get("built")
    if built is not None:
        from enf.evaluation.metrics import chemistry

        first_valid = np.flatnonzero(built.valid)[:GRID_2D_MAX]
        if len(first_valid):
            kept = chemistry.build_molecules(samples.positions[first_valid], samples.atom_types[first_valid],
                                             samples.atom_mask[first_valid], keep_molecules=True)
            path = figures_dir / "molecules_grid_2d.png"
            figures.molecules_grid_2d(kept.molecules, path, legends=[f"#{k}" for k in first_valid])
            written["molecules_grid_2d"] = str(path)

    shown = ok[:VIEWS_3D]
    if len(shown):
        pos = [samples.positions[k][samples.atom_mask[k]] for k in shown]
        types = orders = None
        titles = [f"#{k}" for k in shown]
        if samples.atom_types is not None:
            types = [samples.atom_types[k][samples.atom_mask[k]] for k in shown]
            orders = [bond_orders(p, t) for p, t in zip(pos, types)]
            stab = extras["stability"]
            titles = [f"#{k} {'stable' if stab.mol_stable[k] else 'unstable'}"
                      f"{', valid' if built.valid[k] else ', invalid'}" for k in shown]
        path = figures_dir / "molecules_3d.png"
        figures.molecules_3d(pos, path, atom_types=types, orders=orders, titles=titles)
        written["molecules_3d"] = str(path)

    if extras.get("sample_hist") is not None and extras["sample_hist"].sum() > 0:
        path = figures_dir / "rel_dist_hist.png"
        figures.rel_dist_histogram_plot(extras["sample_hist"], path, extras.get("reference_hist"),
                                        js=result.get("js_rel_dist"))
        written["rel_dist_hist"] = str(path)
    return written

