"""Core speed benchmark: seconds per E-NF training iteration (DW4, LJ13; batch 100; dopri5 at 1e-4;
Rademacher Hutchinson) and seconds for the exact-trace NLL of 1000 DW4 samples, beside the authors' code.

Usage: python benchmarks/bench_core.py [--iters 5] [--compile] [--threads 2] [--data-dw4 DIR --data-lj13 DIR]
                                       [--authors EN_FLOWS_CHECKOUT]
Prints a table and writes benchmarks/results/core.csv. Data default to Gaussian blobs of the data's scale;
pass MCMC data folders to time iterations on real configurations. With --authors, the authors' code is timed
in the same process on the same batches (fair on a shared machine); otherwise their figures from issue 2 are
used (measured here earlier, on an idle machine).
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from pathlib import Path

import torch
from authors_en_flows import time_exact_nll as authors_exact_nll
from authors_en_flows import time_training as authors_training

from enf.config import resolve
from enf.data.datasets import DATASETS, load_split
from enf.geometry import remove_mean
from enf.models import build_model

# Measured here with the authors' code (issue 2 / performance.md): seconds per iteration at initialisation.
AUTHORS = {"dw4 train iteration": 0.43, "lj13 train iteration": 3.7, "dw4 exact NLL, 1000 samples": 9.0}


def positions(name: str, n: int, data_dir: str | None) -> torch.Tensor:
    spec = DATASETS.get(name)
    if data_dir:
        return load_split(spec, Path(data_dir) / "train.npz", n)["positions"]
    scale = {"dw4": 2.0, "lj13": 0.8}[name]
    return remove_mean(torch.randn(n, spec.n_nodes, spec.n_dim) * scale)


def time_training(name: str, iters: int, compile: bool, adjoint: bool, data_dir: str | None) -> dict:
    torch.manual_seed(0)
    cfg = resolve(name, "enf", 1000, sets={"flow": {"compile": compile, "adjoint": adjoint}})
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-12, amsgrad=True)
    x = positions(name, 100, data_dir)
    times, nfes = [], []
    for i in range(iters + 1):  # the first iteration warms up (and compiles)
        start = time.perf_counter()
        opt.zero_grad()
        model.nll({"positions": x})["nll"].mean().backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
            nfes.append(model.cnf.last_nfe)
    return {"seconds": statistics.median(times), "nfe": statistics.mean(nfes)}


def time_exact_nll(iters: int, data_dir: str | None) -> dict:
    torch.manual_seed(0)
    model = build_model(resolve("dw4", "enf", 1000))
    model.eval()
    x = positions("dw4", 1000, data_dir)
    times = []
    model.nll({"positions": x[:10]}, trace="exact")  # warm-up
    for _ in range(iters):
        start = time.perf_counter()
        with torch.no_grad():
            model.nll({"positions": x}, trace="exact")
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "nfe": model.cnf.last_nfe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time the compiled evaluation")
    parser.add_argument("--data-dw4", default=None)
    parser.add_argument("--data-lj13", default=None)
    parser.add_argument("--authors", default=None, help="a checkout of vgsatorras/en_flows to time beside ours")
    parser.add_argument("--out", default="benchmarks/results/core.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    variants = [("eager, direct backprop", False, False), ("eager, adjoint", False, True)]
    if args.compile:
        variants.append(("compiled, direct backprop", True, False))
    measured: dict[str, float] = {}
    for name in ("dw4", "lj13"):
        data = args.data_dw4 if name == "dw4" else args.data_lj13
        if args.authors:
            torch.manual_seed(0)
            r = authors_training(args.authors, positions(name, 100, data), args.iters)
            measured[f"{name} train iteration"] = r["seconds"]
            rows.append({"task": f"{name} train iteration", "variant": "authors' code (adjoint)", **r})
            print(rows[-1], flush=True)
        for label, compile, adjoint in variants:
            torch.manual_seed(0)
            r = time_training(name, args.iters, compile, adjoint, data)
            rows.append({"task": f"{name} train iteration", "variant": label, **r})
            print(rows[-1], flush=True)
    if args.authors:
        torch.manual_seed(0)
        r = authors_exact_nll(args.authors, positions("dw4", 1000, args.data_dw4), 100, max(args.iters // 2, 1))
        measured["dw4 exact NLL, 1000 samples"] = r["seconds"]
        rows.append({"task": "dw4 exact NLL, 1000 samples", "variant": "authors' code (batches of 100)", **r})
        print(rows[-1], flush=True)
    r = time_exact_nll(max(args.iters // 2, 1), args.data_dw4)
    rows.append({"task": "dw4 exact NLL, 1000 samples", "variant": "eager, one solve", **r})
    for row in rows:
        ref = measured.get(row["task"], AUTHORS.get(row["task"]))
        row["authors_seconds"] = round(ref, 4)
        row["authors_source"] = "measured beside" if row["task"] in measured else "issue 2 figure"
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
