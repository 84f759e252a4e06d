"""Core speed benchmark: seconds per E-NF training iteration (DW4, LJ13; batch 100; dopri5 at 1e-4;
Rademacher Hutchinson) and seconds for the exact-trace NLL of 1000 DW4 samples, beside the authors' code.

Usage: python benchmarks/bench_core.py [--iters 5] [--compile] [--threads 2] [--data-dw4 DIR --data-lj13 DIR]
                                       [--authors EN_FLOWS_CHECKOUT]
Prints a table and writes benchmarks/results/core.csv. Data default to Gaussian blobs of the data's scale;
pass MCMC data folders to time iterations on real configurations. With --authors, the authors' code is timed
in the same process on the same batches (fair on a shared machine); otherwise their figures measured here earlier
(on an idle machine) are used.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from authors_en_flows import exact_nll_step as authors_exact_nll_step
from authors_en_flows import training_step as authors_training_step

from enf.config import resolve
from enf.data.datasets import DATASETS, load_split
from enf.geometry import remove_mean
from enf.models import build_model

# Measured here earlier with the authors' code (vgsatorras/en_flows, commit 2fd18bf): seconds per iteration
# at initialisation.
AUTHORS_LABEL = "authors' code (adjoint)"
AUTHORS = {"dw4 train iteration": 0.43, "lj13 train iteration": 3.7, "dw4 exact NLL, 1000 samples": 9.0}


def positions(name: str, n: int, data_dir: str | None) -> torch.Tensor:
    spec = DATASETS.get(name)
    if data_dir:
        return load_split(spec, Path(data_dir) / "train.npz", n)["positions"]
    scale = {"dw4": 2.0, "lj13": 0.8}[name]
    return remove_mean(torch.randn(n, spec.n_nodes, spec.n_dim) * scale)


def training_step(name: str, x: torch.Tensor, compile: bool, adjoint: bool) -> Callable[[], int]:
    """One E-NF training iteration (Hutchinson NLL, backward, AdamW) on batch x; returns the forward NFE."""
    torch.manual_seed(0)
    cfg = resolve(name, "enf", 1000, sets={"flow": {"compile": compile, "adjoint": adjoint}})
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-12, amsgrad=True)

    def step() -> int:
        opt.zero_grad()
        model.nll({"positions": x})["nll"].mean().backward()
        opt.step()
        return model.last_nfe

    return step


def exact_nll_step(x: torch.Tensor, compile: bool = False) -> Callable[[], int]:
    """The exact-trace NLL of all of x in one solve (no graph); returns its NFE."""
    torch.manual_seed(0)
    model = build_model(resolve("dw4", "enf", 1000, sets={"flow": {"compile": compile}}))

    def step() -> int:
        with torch.no_grad():
            model.nll({"positions": x}, trace="exact")
        return model.last_nfe

    return step


def round_robin(steps: dict[str, Callable[[], int]], rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds and mean NFE of each step, timed in turns (one of each per round, the order rotating), so
    that a change in the machine's load hits every contender alike. Each step first runs once untimed (warm-up,
    compilation)."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    nfes: dict[str, list[int]] = {k: [] for k in steps}
    labels = list(steps)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            start = time.perf_counter()
            nfes[label].append(steps[label]())
            times[label].append(time.perf_counter() - start)
    return {k: {"seconds": statistics.median(times[k]), "nfe": statistics.mean(nfes[k])} for k in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time the compiled evaluation")
    parser.add_argument("--data-dw4", default=None)
    parser.add_argument("--data-lj13", default=None)
    parser.add_argument("--tasks", default="train,exact", help="comma-separated subset of train,exact")
    parser.add_argument("--authors", default=None, help="a checkout of vgsatorras/en_flows to time beside ours")
    parser.add_argument("--out", default="benchmarks/results/core.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    variants = [("eager, direct backprop", False, False), ("eager, adjoint", False, True)]
    if args.compile:
        variants += [("compiled, direct backprop", True, False), ("compiled, adjoint", True, True)]
    measured: dict[str, float] = {}
    for name in ("dw4", "lj13") if "train" in args.tasks else ():
        task = f"{name} train iteration"
        torch.manual_seed(0)
        x = positions(name, 100, args.data_dw4 if name == "dw4" else args.data_lj13)
        steps = {label: training_step(name, x, compile, adjoint) for label, compile, adjoint in variants}
        if args.authors:
            steps[AUTHORS_LABEL] = authors_training_step(args.authors, x)
        for label, r in round_robin(steps, args.iters).items():
            rows.append({"task": task, "variant": label, **r})
            print(rows[-1], flush=True)
        if args.authors:
            measured[task] = rows[-1]["seconds"]
    task = "dw4 exact NLL, 1000 samples"
    torch.manual_seed(0)
    x = positions("dw4", 1000, args.data_dw4)
    steps = {"eager, one solve": exact_nll_step(x)} if "exact" in args.tasks else {}
    if steps and args.compile:
        steps["compiled, one solve"] = exact_nll_step(x, compile=True)
    if steps and args.authors:
        steps[AUTHORS_LABEL + ", batches of 100"] = authors_exact_nll_step(args.authors, x, 100)
    for label, r in (round_robin(steps, max(args.iters // 2, 2)) if steps else {}).items():
        rows.append({"task": task, "variant": label, **r})
        print(rows[-1], flush=True)
    if steps and args.authors:
        measured[task] = rows[-1]["seconds"]
    for row in rows:
        ref = measured.get(row["task"], AUTHORS.get(row["task"]))
        row["authors_seconds"] = round(ref, 4)
        row["authors_source"] = "measured beside" if row["task"] in measured else "earlier measurement"
        row["speedup_vs_authors"] = round(ref / row["seconds"], 2) if ref else None
        row["threads"] = args.threads
        row["machine"] = platform.processor() or platform.machine()
    print(f"\n{'task':30} {'variant':32} {'seconds':>8} {'nfe':>6} {'authors':>8} {'speedup':>8}")
    for row in rows:
        print(f"{row['task']:30} {row['variant']:32} {row['seconds']:8.3f} {row['nfe']:6.1f} "
              f"{row['authors_seconds']:8.2f} {row['speedup_vs_authors']:8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
