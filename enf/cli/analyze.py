"""`enf analyze`: stability, RDKit validity/uniqueness/novelty and JS(rel. dist) of a set of molecules, as JSON.

Works on generated samples and on real data alike (the QM9 .npz format, or positions only as in QM9-positional).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from enf.errors import EnfError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("analyze", help="sample-quality metrics and pictures of a set of molecules",
                              description=__doc__)
    p.add_argument("--data", required=True, metavar="FILE.npz", help="molecules or positions to analyse")
    p.add_argument("--out", required=True, metavar="FILE.json", help="where to write the metrics")
    p.add_argument("--reference", default=None, metavar="TRAIN.npz",
                   help="training data: novelty and the relative-distance JS divergence are measured against it")
    p.add_argument("--novelty-from", choices=("positions", "smiles", "both"), default="both",
                   help="reference SMILES built from its positions by the samples' pipeline (the conventional "
                        "novelty), from its own smiles array, or both (default; 'novelty' is then the first)")
    p.add_argument("--figures", default=None, metavar="DIR", help="where to write the PNGs (default: beside --out)")
    p.add_argument("--no-figures", action="store_true", help="write no pictures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from enf.evaluation.metrics import FIGURE_FILES, analyze, load_molecule_set, write_figures
    from enf.io import check_paths, sha256_file, write_json
    from enf.version import code_version

    out = Path(args.out)
    if out.suffix != ".json":
        raise EnfError(f"--out {out}: expected a .json file name")
    figures = None if args.no_figures else Path(args.figures) if args.figures else out.parent
    check_paths({"--data": args.data, "--reference": args.reference}, {"--out": out},
                dirs={"--figures": (figures, FIGURE_FILES)})
    start = time.perf_counter()
    samples = load_molecule_set(args.data)
    reference = load_molecule_set(args.reference) if args.reference else None
    result, extras = analyze(samples, reference, novelty_from=args.novelty_from)
    result.update(
        data=str(args.data), data_sha256=sha256_file(args.data),
        reference=None if reference is None else str(args.reference),
        reference_sha256=None if reference is None else sha256_file(args.reference),
        code_version=code_version(),
    )
    if not args.no_figures:
        figures_start = time.perf_counter()
        result["figures"] = write_figures(extras, result, figures)
        result["timings_s"]["figures"] = round(time.perf_counter() - figures_start, 3)
    result["timings_s"]["total"] = round(time.perf_counter() - start, 3)
    write_json(out, result)
    print(_summary(result))
    return 0


def _summary(result: dict) -> str:
    """One line of the headline numbers for the log."""
    keys = ("atom_stability", "mol_stability", "validity", "uniqueness", "novelty", "js_rel_dist")
    parts = [f"{key} {result[key]:.4g}" for key in keys if result.get(key) is not None]
    return f"analyzed {result['n_molecules']} molecules ({result['n_failed']} failed): " + ", ".join(parts)
