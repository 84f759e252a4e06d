"""Pictures of an analysed set of molecules: 2D depictions, 3D views and the relative-distance histogram (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enf.evaluation.metrics.distances import bin_edges
from enf.evaluation.metrics.stability import ELEMENTS
from enf.figures import plt, save_figure
from enf.io import atomic_path

# CPK-like colours per element of ELEMENTS, and a neutral grey for atoms of unknown type.
ELEMENT_COLOURS: dict[str, str] = {"H": "#d9d9d9", "C": "#404040", "N": "#3050f8", "O": "#ff0d0d", "F": "#90e050"}
ELEMENT_SIZES: dict[str, float] = {"H": 25.0, "C": 60.0, "N": 60.0, "O": 60.0, "F": 55.0}
UNTYPED_COLOUR = "#7f7f7f"


def molecules_grid_2d(molecules: Sequence[Any], path: str | Path, legends: Sequence[str] | None = None,
                      per_row: int = 4, size: int = 250) -> str:
    """2D depictions (hydrogens hidden) of RDKit molecules in a grid; RDKit's drawer, or matplotlib without PIL."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mols = [Chem.RemoveHs(Chem.Mol(mol)) for mol in molecules]
    for mol in mols:
        AllChem.Compute2DCoords(mol)
    legends = list(legends) if legends is not None else [""] * len(mols)
    try:
        from rdkit.Chem import Draw

        image = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(size, size), legends=legends,
                                     returnPNG=False)
        if not hasattr(image, "save"):  # no PIL behind RDKit's drawer
            raise ImportError("MolsToGridImage returned no PIL image")
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        return "rdkit"
    except ImportError:
        _grid_2d_matplotlib(mols, path, legends, per_row)
        return "matplotlib"


def _grid_2d_matplotlib(mols: Sequence[Any], path: str | Path, legends: Sequence[str], per_row: int) -> None:
    """Fallback depiction: RDKit's 2D coordinates drawn as atoms and bond lines with matplotlib."""
    n_rows = max(1, -(-len(mols) // per_row))
    fig, axes = plt.subplots(n_rows, per_row, figsize=(2.6 * per_row, 2.6 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, mol, legend in zip(axes.flat, mols, legends):
        xy = mol.GetConformer().GetPositions()[:, :2]
        for bond in mol.GetBonds():
            i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            ax.plot(xy[[i, j], 0], xy[[i, j], 1], color="k", lw=1.0 + bond.GetBondTypeAsDouble() * 0.6, zorder=1)
        for atom, (x, y) in zip(mol.GetAtoms(), xy):
            symbol = atom.GetSymbol()
            ax.scatter(x, y, s=120, color=ELEMENT_COLOURS.get(symbol, UNTYPED_COLOUR), zorder=2)
        ax.set_title(legend, fontsize=7)
        ax.set_aspect("equal")
    save_figure(fig, path)


def molecules_3d(positions: Sequence[np.ndarray], path: str | Path, atom_types: Sequence[np.ndarray] | None = None,
                 orders: Sequence[np.ndarray] | None = None, titles: Sequence[str] | None = None,
                 per_row: int = 3) -> None:
    """3D scatter views of a few molecules (real atoms only), coloured by element, with bonds where given."""
    n = len(positions)
    n_rows = max(1, -(-n // per_row))
    fig = plt.figure(figsize=(3.4 * per_row, 3.4 * n_rows))
    for k in range(n):
        ax = fig.add_subplot(n_rows, per_row, k + 1, projection="3d")
        x = np.asarray(positions[k], dtype=float)
        if orders is not None:
            for i, j in zip(*np.nonzero(np.triu(orders[k], k=1))):
                ax.plot(*x[[i, j]].T, color="k", lw=0.8 + 0.7 * float(orders[k][i, j]), alpha=0.7)
        if atom_types is not None:
            symbols = [ELEMENTS[int(t)] for t in atom_types[k]]
            colours = [ELEMENT_COLOURS[s] for s in symbols]
            sizes = [ELEMENT_SIZES[s] for s in symbols]
        else:
            colours, sizes = [UNTYPED_COLOUR] * len(x), [40.0] * len(x)
        ax.scatter(*x.T, c=colours, s=sizes, edgecolors="k", linewidths=0.3, depthshade=False)
        extent = max(float(np.abs(x - x.mean(axis=0)).max()), 1.0)
        centre = x.mean(axis=0)
        for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
            setter(c - extent, c + extent)
        ax.set_box_aspect(None, zoom=1.25)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[k], fontsize=8)
    if atom_types is not None:
        handles = [plt.Line2D([], [], marker="o", ls="", color=ELEMENT_COLOURS[s], markeredgecolor="k", label=s)
                   for s in ELEMENTS]
        fig.legend(handles=handles, loc="lower center", ncol=len(ELEMENTS), frameon=False)
    save_figure(fig, path)


def rel_dist_histogram_plot(sample_counts: np.ndarray, path: str | Path, reference_counts: np.ndarray | None = None,
                            js: float | None = None, labels: tuple[str, str] = ("samples", "reference")) -> None:
    """Normalised relative-distance histograms of samples and reference as step curves, JS in the title."""
    edges = bin_edges(len(sample_counts))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if reference_counts is not None:
        ax.stairs(reference_counts / max(reference_counts.sum(), 1), edges, label=labels[1], color="tab:blue",
                  lw=1.5)
    ax.stairs(sample_counts / max(sample_counts.sum(), 1), edges, label=labels[0], color="tab:orange", lw=1.5)
    ax.set_xlabel("relative distance (Angstrom; last bin holds larger values)")
    ax.set_ylabel("fraction of pairs per bin")
    ax.set_xlim(edges[0], edges[-1])
    ax.legend()
    if js is not None:
        ax.set_title(f"JS divergence = {js:.4g} nats")
    save_figure(fig, path)
