"""`enf data`: make a data set's train/valid/test.npz and meta.json (DW4 and LJ13 by MCMC, QM9 from qm9pack).

Re-running with the same arguments reuses valid output; a folder holding another data set is refused unless
--force.
"""

from __future__ import annotations

import argparse


def _log(msg: str) -> None:
    print(msg, flush=True)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="generate or prepare a data set (dw4, lj13, qm9, qm9_positional)",
                              description=__doc__)
    sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, n_train, what in (("dw4", 100_000, "4 particles in 2D, double-well pair energy"),
                                ("lj13", 10_000, "13 Lennard-Jones particles in 3D with a harmonic trap")):
        q = sub.add_parser(name, help=f"{what}; Metropolis MCMC", description=f"{name}: {what}.")
        q.add_argument("--out", required=True, metavar="DIR", help="output folder")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--n-train", type=int, default=n_train, help=f"training samples (default {n_train:,})")
        q.add_argument("--n-valid", type=int, default=1000)
        q.add_argument("--n-test", type=int, default=1000)
        q.add_argument("--chains", type=int, default=None, help="parallel chains of the training pool")
        q.add_argument("--eval-chains", type=int, default=None, help="chains of each of valid and test")
        q.add_argument("--burn-in", type=int, default=None, help="step-size adaptation sweeps")
        q.add_argument("--max-sweeps", type=int, default=20_000,
                       help="give up if the chains have not equilibrated after this many sweeps")
        q.add_argument("--rhat-target", type=float, default=1.01,
                       help="equilibration ends when the thinned split R-hat is below this")
        if name == "lj13":
            q.add_argument("--energy", choices=("ordered", "unique"), default="ordered",
                           help="LJ term over ordered pairs (the paper's data, default) or unique pairs (bgflow)")
            q.add_argument("--no-openmm-check", dest="openmm_check", action="store_false",
                           help="skip the OpenMM Langevin cross-check")
        q.add_argument("--quick", action="store_true",
                       help="smoke tests only: no wait for equilibrium, failed checks recorded, not refused")
        q.add_argument("--force", action="store_true", help="overwrite whatever the folder holds")
        q.set_defaults(func=run_particles)
    for name, what in (("qm9", "QM9 molecules with atom types, Cormorant split"),
                       ("qm9_positional", "the 19-atom QM9 molecules, positions only")):
        q = sub.add_parser(name, help=what, description=f"{name}: {what} (from the qm9pack package).")
        q.add_argument("--out", required=True, metavar="DIR", help="output folder")
        q.add_argument("--source", default=None, metavar="DIR",
                       help="folder with qm9_part{1,2,3}.csv (default: the installed qm9pack)")
        q.add_argument("--force", action="store_true", help="overwrite whatever the folder holds")
        q.set_defaults(func=run_qm9)


def run_particles(args: argparse.Namespace) -> int:
    from enf.data.particles import FIGURES, generate_particles
    from enf.io import check_paths

    check_paths({}, dirs={"--out": (args.out, _data_files(FIGURES))})

    generate_particles(args.dataset, args.out, n_train=args.n_train, n_valid=args.n_valid, n_test=args.n_test,
                       seed=args.seed, energy=getattr(args, "energy", "ordered"), chains=args.chains,
                       eval_chains=args.eval_chains, burn_in=args.burn_in, max_sweeps=args.max_sweeps,
                       rhat_target=args.rhat_target, openmm_check=getattr(args, "openmm_check", False),
                       quick=args.quick, force=args.force, log=_log)
    return 0


def run_qm9(args: argparse.Namespace) -> int:
    from pathlib import Path

    from enf.data.qm9 import CSV_FILES, prepare_qm9
    from enf.io import check_paths

    sources = [args.source, *(Path(args.source) / name for name in CSV_FILES)] if args.source else None
    check_paths({"--source": sources}, dirs={"--out": (args.out, _data_files())})

    prepare_qm9(args.out, positional=args.dataset == "qm9_positional", source=args.source, force=args.force,
                log=_log)
    return 0


def _data_files(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The files `enf data` writes in its output folder."""
    from enf.data.datasets import SPLITS
    from enf.data.outputs import MARKER, META

    return (*(f"{split}.npz" for split in SPLITS), META, MARKER, *extra)
