"""Train and test with the authors' own DW4/LJ13 script (vgsatorras/en_flows `main_dw4_lj13.py`) on enf's data.

Their script runs unmodified in a scratch copy of a checkout: enf's splits are written into the files it reads
(LJ13: `holdout_data_LJ13.npy` + `idx_LJ13.npy` for training, `all_data_LJ13.npy` = test then validation;
DW4: `dw4-dataidx.npy` = training, validation, test), `wandb` is replaced by a module that does nothing, and
torch/numpy are seeded (their script does not seed). It prints their validation and test NLL at every
evaluation; this script parses them and writes a JSON summary: the test NLL at the best validation NLL (their
selection rule), wall and CPU seconds. It answers "does the authors' code give on our data what enf gives?",
which tells a difference of data from a difference of code.

  python benchmarks/authors_train.py --authors CHECKOUT --dataset lj13 --data results/data_full/lj13 \
      --n-train 10 --model enf --seed 0 --out authors_lj13_n10_seed0.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import runpy
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

# The paper's per-size settings, as their README's `--sweep_n_data True` sets them: epochs, test cadence, batch.
SWEEP = {"dw4": {100: (1000, 20, 100), 1000: (300, 5, 100), 10_000: (50, 1, 100), 100_000: (6, 1, 100)},
         "lj13": {10: (500, 10, 10), 100: (1000, 25, 100), 1000: (300, 5, 100), 10_000: (50, 1, 100)}}
# Their README's learning rate per model (E-NF 5e-4, every baseline 1e-3) and the GNF-variant switches.
MODELS = {"enf": ("egnn_dynamics", 5e-4, []), "gnf": ("gnn_dynamics", 1e-3, ["--attention", "False"]),
          "gnf_att": ("gnn_dynamics", 1e-3, []),
          "gnf_att_aug": ("gnn_dynamics", 1e-3, ["--data_augmentation", "True"]),
          "simple_dynamics": ("simple_dynamics", 1e-3, []), "kernel_dynamics": ("kernel_dynamics", 1e-3, [])}


def positions(path: Path) -> np.ndarray:
    """An enf split's positions, flattened per sample as their loaders expect."""
    with np.load(path, allow_pickle=False) as f:
        x = f["positions"].astype(np.float32)
    return x.reshape(x.shape[0], -1)


def write_their_data(dataset: str, data_dir: Path, target: Path) -> None:
    """enf's train/valid/test splits under the file names and layout their loaders read."""
    train, valid, test = (positions(data_dir / f"{s}.npz") for s in ("train", "valid", "test"))
    target.mkdir(parents=True, exist_ok=True)
    if dataset == "lj13":
        np.save(target / "holdout_data_LJ13.npy", train)
        np.save(target / "idx_LJ13.npy", np.arange(len(train)))
        np.save(target / "all_data_LJ13.npy", np.concatenate([test, valid]))  # test = [0:1000], val = [1000:2000]
    else:
        assert len(valid) == 1000 and len(test) == 1000, "their DW4 loader takes the last 2 x 1000 samples"
        data = np.concatenate([train, valid, test])
        arr = np.empty(2, dtype=object)
        arr[0], arr[1] = data, None
        np.save(target / "dw4-dataidx.npy", arr, allow_pickle=True)


def their_args(dataset: str, model: str, n_train: int, epochs: int | None = None) -> list[str]:
    """Their command line for one cell at the paper's settings (`epochs` overrides, for a quick check only)."""
    paper_epochs, every, batch = SWEEP[dataset][n_train]
    epochs = paper_epochs if epochs is None else epochs
    name, lr, extra = MODELS[model]
    return ["--data", dataset, "--model", name, "--lr", str(lr), "--n_layers", "3", "--nf", "32",
            "--n_data", str(n_train), "--n_epochs", str(epochs), "--test_epochs", str(every),
            "--batch_size", str(batch), *extra]


def parse(log: str) -> dict[str, Any]:
    """Their printed evaluations -> per-evaluation (val, test) and the test NLL at the best validation."""
    vals = [float(v) for v in re.findall(r"^val nll (\S+)$", log, re.M)]
    tests = [float(v) for v in re.findall(r"^test nll (\S+)$", log, re.M)]
    if not vals or len(vals) != len(tests):
        return {"evaluations": [], "best_val_nll": None, "test_nll": None}
    best = int(np.argmin(vals))
    return {"evaluations": list(zip(vals, tests)), "best_index": best, "best_val_nll": vals[best],
            "test_nll": tests[best]}


def run(checkout: Path, dataset: str, data_dir: Path, n_train: int, model: str, seed: int,
        log_path: Path, epochs: int | None = None) -> dict[str, Any]:
    """Their script in a scratch copy of `checkout`; returns the parsed summary with timings."""
    with tempfile.TemporaryDirectory(prefix="en_flows_") as tmp:
        work = Path(tmp) / "en_flows"
        shutil.copytree(checkout, work, ignore=shutil.ignore_patterns(".git", "outputs", "*.npy"))
        write_their_data(dataset, data_dir, work / "dw4_experiment" / "data")
        stub = types.ModuleType("wandb")
        stub.init = stub.log = stub.save = lambda *a, **k: None  # type: ignore[attr-defined]
        sys.modules["wandb"] = stub
        import torch

        torch.manual_seed(seed)
        np.random.seed(seed)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        argv, cwd = sys.argv, Path.cwd()
        sys.argv = ["main_dw4_lj13.py", *their_args(dataset, model, n_train, epochs)]
        sys.path.insert(0, str(work))
        start, cpu = time.perf_counter(), time.process_time()
        try:
            os.chdir(work)
            # Line-buffered: a run killed part-way keeps every evaluation it printed.
            with open(log_path, "w", buffering=1) as log, contextlib.redirect_stdout(log):
                runpy.run_path("main_dw4_lj13.py", run_name="__main__")
        finally:
            os.chdir(cwd)
            sys.argv = argv
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    summary = parse(log_path.read_text())
    summary.update(dataset=dataset, model=model, their_model=MODELS[model][0], n_train=n_train, seed=seed,
                   args=their_args(dataset, model, n_train, epochs), paper_budget=epochs is None,
                   wall_seconds=wall, cpu_seconds=cpu,
                   torch=torch.__version__, data=str(data_dir), log=str(log_path))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors", required=True, type=Path, help="a checkout of vgsatorras/en_flows")
    parser.add_argument("--dataset", choices=sorted(SWEEP), required=True)
    parser.add_argument("--data", required=True, type=Path, help="an `enf data` folder (train/valid/test.npz)")
    parser.add_argument("--n-train", type=int, required=True)
    parser.add_argument("--model", choices=sorted(MODELS), default="enf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the paper's epochs (a quick check)")
    parser.add_argument("--out", required=True, type=Path, help="summary JSON (their log beside it, .log)")
    args = parser.parse_args()
    if not (args.authors / "main_dw4_lj13.py").is_file():
        raise SystemExit(f"--authors {args.authors}: not a checkout of vgsatorras/en_flows (no main_dw4_lj13.py)")
    if args.n_train not in SWEEP[args.dataset]:
        sizes = sorted(SWEEP[args.dataset])
        raise SystemExit(f"--n-train {args.n_train}: the paper's {args.dataset} sizes are {sizes}")
    summary = run(args.authors.resolve(), args.dataset, args.data.resolve(), args.n_train, args.model, args.seed,
                  args.out.with_suffix(".log").resolve(), args.epochs)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("best_val_nll", "test_nll", "wall_seconds", "cpu_seconds")}))


if __name__ == "__main__":
    main()
