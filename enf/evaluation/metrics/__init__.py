"""Sample-quality metrics of molecules and positions: stability, RDKit validity/uniqueness/novelty, JS(rel. dist).

`load_molecule_set` (molecule_set.py) reads and checks an .npz in the QM9 data format (or positions only, as in
QM9-positional); `analyze` (analysis.py) computes every metric that the data allow and returns a JSON-ready dict;
`write_figures` draws them. This package module only re-exports them.
"""

from enf.evaluation.metrics.analysis import FIGURE_FILES, analyze, write_figures
from enf.evaluation.metrics.molecule_set import MoleculeSet, load_molecule_set

__all__ = ["FIGURE_FILES", "MoleculeSet", "analyze", "load_molecule_set", "write_figures"]
