"""Maximum likelihood (ML) against flow matching (FM) for the same E-NF network on the same machine.

Both runs start from the same initial weights, use the run config of `enf train` (network, AdamW, learning rate,
batch size 100, dopri5 at 1e-4) and differ only in the loss: ML back-propagates the NLL through the ODE solve
(Hutchinson trace), FM regresses the field on straight paths (enf/training/flow_matching.py; pairing and sigma from the
config or the flags). Training wall time excludes validation; every `--*-eval-every` iterations the validation
NLL is computed exactly as `enf train` does (flow.trace_eval: exact for DW4) and the function evaluations per
solve are recorded. The selected model (best validation NLL) gets the test NLL.

Reported per method: iterations, training seconds, seconds per iteration, best validation NLL, its test NLL,
NFE per solve (training solves for ML; evaluation solves for both) and the training seconds until the
validation NLL first reached `--target` (default: the paper's E-NF DW4 value at n = 1000, 8.15). If ML does not
reach it within its budget, its time to the target is extrapolated as (seconds per iteration measured over the
whole budget) x (the protocol's iterations: 300 epochs x 10 = 3000) and labelled `extrapolated`.
`--interleave K` also times K ML and K FM iterations alternately in one process, at the initial weights and at
the selected ones (a cost ratio robust to the machine's load, which the sequential runs are not).

Usage:
  python benchmarks/bench_flow_matching.py --data DATA_DIR [--dataset dw4] [--n-train 1000]
      [--ml-iterations 300] [--fm-iterations 3000] [--ml-eval-every 50] [--fm-eval-every 250]
      [--pairing equivariant_ot] [--sigma 0.0] [--fm-lr LR] [--ml-lr LR] [--interleave 20] [--out benchmarks/results]
Writes OUT/flow_matching.csv (one row per method, appended with a timestamp) and
OUT/flow_matching_trajectory_<dataset>.csv (validation NLL against training time), and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from enf.config import resolve
from enf.data.datasets import DATASETS, load_split, split_path
from enf.evaluation import batches, evaluate_nll
from enf.models import build_model
from enf.training import seed_everything
from enf.training.flow_matching import flow_matching_loss

#: The paper's E-NF test NLLs at n = 1000 (Table 1).
PAPER_ENF = {"dw4": 8.15, "lj13": 30.56}
#: The protocol's budget at n = 1000: 300 epochs of 10 iterations.
PROTOCOL_ITERATIONS = {"dw4": 3000, "lj13": 3000}


def log(message: str) -> None:
    print(f"[bench_flow_matching] {message}", file=sys.stderr, flush=True)


def make_optimizer(model: torch.nn.Module, cfg: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    t = cfg["train"]
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=float(t["weight_decay"]),
                             amsgrad=bool(t["amsgrad"]))


def step(method: str, model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
         cfg: dict[str, Any]) -> tuple[float, float]:
    """One optimiser step; returns (loss, NFE of the training solve or 0)."""
    opt.zero_grad(set_to_none=True)
    if method == "ml":
        loss = model.nll(batch, trace=cfg["flow"]["trace_train"])["nll"].mean()
        nfe = float(model.last_nfe)
    else:
        loss = flow_matching_loss(model, batch, cfg)["loss"]
        nfe = 0.0
    if not torch.isfinite(loss):
        raise RuntimeError(f"{method}: non-finite loss")
    loss.backward()
    opt.step()
    return float(loss.detach()), nfe


def train_run(method: str, model: torch.nn.Module, cfg: dict[str, Any], data: dict[str, Any], iterations: int,
              eval_every: int, lr: float, target: float, seed: int, max_seconds: float | None) -> dict[str, Any]:
    """Train for `iterations` (or `max_seconds` of training time), validating every `eval_every` iterations."""
    torch.manual_seed(seed)
    opt = make_optimizer(model, cfg, lr)
    bs, trace = int(cfg["train"]["batch_size"]), cfg["flow"]["trace_eval"]
    n_train = data["train"]["positions"].shape[0]
    train_seconds, it, epoch = 0.0, 0, 0
    nfes: list[float] = []
    trajectory: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_nll": math.inf}
    reached: float | None = None

    def validate() -> None:
        nonlocal best, reached
        val = evaluate_nll(model, data["valid"], int(cfg["train"]["eval_batch_size"]), trace)
        model.train()
        row = {"method": method, "iteration": it, "epoch": epoch, "train_seconds": train_seconds,
               "val_nll": val["nll"], "val_nll_sem": val["nll_sem"], "val_nfe": val["nfe_per_solve"],
               "val_seconds": val["seconds"],
               "train_nfe": sum(nfes[-eval_every:]) / max(len(nfes[-eval_every:]), 1) if method == "ml" else 0.0}
        trajectory.append(row)
        log(f"{method}: it {it}, {train_seconds:.1f} s, validation NLL {val['nll']:.3f} +- {val['nll_sem']:.3f}, "
            f"eval NFE {val['nfe_per_solve']:.0f}" + (f", train NFE {row['train_nfe']:.0f}" if method == "ml" else ""))
        if val["nll"] < best["val_nll"]:
            best = {"val_nll": val["nll"], "iteration": it, "train_seconds": train_seconds,
                    "state": copy.deepcopy(model.state_dict())}
        if reached is None and val["nll"] <= target:
            reached = train_seconds

    model.train()
    validate()
    while it < iterations and (max_seconds is None or train_seconds < max_seconds):
        order = torch.randperm(n_train)
        for batch in batches(data["train"], bs, order, drop_last=True):
            start = time.perf_counter()
            _, nfe = step(method, model, opt, batch, cfg)
            train_seconds += time.perf_counter() - start
            nfes.append(nfe)
            it += 1
            if it % eval_every == 0:
                validate()
            if it >= iterations or (max_seconds is not None and train_seconds >= max_seconds):
                break
        epoch += 1
    if it % eval_every:
        validate()
    model.load_state_dict(best["state"])
    test = evaluate_nll(model, data["test"], int(cfg["train"]["eval_batch_size"]), trace)
    return {"method": method, "iterations": it, "train_seconds": train_seconds,
            "seconds_per_iteration": train_seconds / max(it, 1), "best_val_nll": best["val_nll"],
            "best_iteration": best["iteration"], "best_train_seconds": best["train_seconds"],
            "test_nll": test["nll"], "test_nll_sem": test["nll_sem"], "test_nfe": test["nfe_per_solve"],
            "eval_trace": trace, "train_nfe": sum(nfes) / len(nfes) if method == "ml" and nfes else 0.0,
            "seconds_to_target": reached, "trajectory": trajectory}


def interleaved_costs(models: dict[str, torch.nn.Module], cfgs: dict[str, dict[str, Any]], data: dict[str, Any],
                      k: int, seed: int) -> dict[str, float]:
    """Median seconds per iteration of each method, timed alternately (ML, FM, ML, ...) in one process.

    The models are copies (their training is not touched); alternating makes the ratio robust to the machine's
    load, which the sequential runs are not.
    """
    torch.manual_seed(seed)
    copies = {m: copy.deepcopy(model) for m, model in models.items()}
    opts = {m: make_optimizer(copies[m], cfgs[m], 5e-4) for m in copies}
    bs = int(cfgs["ml"]["train"]["batch_size"])
    batch_list = batches(data["train"], bs, torch.randperm(data["train"]["positions"].shape[0]), drop_last=True)
    times: dict[str, list[float]] = {m: [] for m in copies}
    for i in range(k + 1):
        batch = batch_list[i % len(batch_list)]
        for method in copies:
            start = time.perf_counter()
            step(method, copies[method], opts[method], batch, cfgs[method])
            if i:
                times[method].append(time.perf_counter() - start)
    return {m: sorted(t)[len(t) // 2] for m, t in times.items()}


def save_checkpoint(model: torch.nn.Module, cfg: dict[str, Any], res: dict[str, Any], path: Path) -> None:
    """The selected model as an enf checkpoint, so that `enf evaluate` / `enf sample` run on it."""
    from enf.models import checkpoints
    from enf.version import code_version

    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(path, {"format": checkpoints.FORMAT, "config": cfg, "model_state": model.state_dict(),
                            "epoch": res["best_iteration"], "code_version": code_version(),
                            "metrics": {k: v for k, v in res.items() if k != "trajectory"}})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/valid/test.npz")
    p.add_argument("--dataset", default="dw4", choices=("dw4", "lj13"))
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--ml-iterations", type=int, default=300)
    p.add_argument("--fm-iterations", type=int, default=3000)
    p.add_argument("--ml-seconds", type=float, default=None, help="stop ML after this much training time")
    p.add_argument("--fm-seconds", type=float, default=None, help="stop FM after this much training time")
    p.add_argument("--ml-eval-every", type=int, default=50)
    p.add_argument("--fm-eval-every", type=int, default=250)
    p.add_argument("--pairing", default=None, help="flow_matching.pairing (default: the config's)")
    p.add_argument("--sigma", type=float, default=None, help="flow_matching.sigma (default: the config's)")
    p.add_argument("--fm-lr", type=float, default=None, help="FM learning rate (default: the config's, as ML)")
    p.add_argument("--ml-lr", type=float, default=None, help="ML learning rate (default: the config's)")
    p.add_argument("--n-valid", type=int, default=None, help="validate on the first N validation samples")
    p.add_argument("--target", type=float, default=None, help="NLL to reach (default: the paper's E-NF value)")
    p.add_argument("--interleave", type=int, default=0,
                   help="also time K alternating ML/FM iterations, at the initial and at the selected weights")
    p.add_argument("--save-dir", default=None, help="save each selected model as DIR/<dataset>_<method>/checkpoint.pt")
    p.add_argument("--methods", default="ml,fm", help="comma-separated: ml, fm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    sets: dict[str, Any] = {"train": {"seed": args.seed, "device": "cpu"}, "flow_matching": {}}
    if args.pairing is not None:
        sets["flow_matching"]["pairing"] = args.pairing
    if args.sigma is not None:
        sets["flow_matching"]["sigma"] = args.sigma
    cfg_ml = resolve(args.dataset, "enf", args.n_train, sets=sets)
    cfg_fm = resolve(args.dataset, "enf", args.n_train, sets={**sets, "train": {**sets["train"],
                                                                                  "objective": "flow_matching"}})
    spec = DATASETS.get(args.dataset)
    data = {"train": load_split(spec, split_path(args.data, "train"), args.n_train),
            "valid": load_split(spec, split_path(args.data, "valid"), args.n_valid),
            "test": load_split(spec, split_path(args.data, "test"))}
    target = args.target if args.target is not None else PAPER_ENF[args.dataset]
    lr = args.ml_lr if args.ml_lr is not None else float(cfg_ml["train"]["lr"])
    fm_lr = args.fm_lr if args.fm_lr is not None else lr
    seed_everything(args.seed)
    init = build_model(cfg_ml).state_dict()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    results = []
    cfgs = {"ml": cfg_ml, "fm": cfg_fm}
    methods = args.methods.split(",")
    trained: dict[str, torch.nn.Module] = {}
    start_costs: dict[str, float] = {}
    if args.interleave:
        fresh = {}
        for m in methods:
            fresh[m] = build_model(cfgs[m])
            fresh[m].load_state_dict(init)
        start_costs = interleaved_costs(fresh, cfgs, data, args.interleave, args.seed)
        log("interleaved seconds per iteration at the initial weights: "
            + ", ".join(f"{m} {v:.3f}" for m, v in start_costs.items()))
    for method in methods:
        cfg = cfgs[method]
        model = build_model(cfg)
        model.load_state_dict(init)
        log(f"{method}: {args.dataset}, n={args.n_train}, lr {lr if method == 'ml' else fm_lr}"
            + (f", pairing {cfg['flow_matching']['pairing']}, sigma {cfg['flow_matching']['sigma']}"
               if method == "fm" else ""))
        res = train_run(method, model, cfg, data,
                        args.ml_iterations if method == "ml" else args.fm_iterations,
                        args.ml_eval_every if method == "ml" else args.fm_eval_every,
                        lr if method == "ml" else fm_lr, target, args.seed,
                        args.ml_seconds if method == "ml" else args.fm_seconds)
        res["lr"] = lr if method == "ml" else fm_lr
        res["pairing"] = cfg["flow_matching"]["pairing"] if method == "fm" else ""
        res["sigma"] = cfg["flow_matching"]["sigma"] if method == "fm" else ""
        if res["seconds_to_target"] is not None:
            res["target_time_kind"] = "measured"
        elif method == "ml":
            res["seconds_to_target"] = res["seconds_per_iteration"] * PROTOCOL_ITERATIONS[args.dataset]
            res["target_time_kind"] = (f"extrapolated: {res['seconds_per_iteration']:.3f} s/it x "
                                       f"{PROTOCOL_ITERATIONS[args.dataset]} protocol iterations")
        else:
            res["target_time_kind"] = "not reached"
        results.append(res)
        trained[method] = model
        if args.save_dir:
            save_checkpoint(model, cfg, res, Path(args.save_dir) / f"{args.dataset}_{method}" / "checkpoint.pt")
    end_costs = interleaved_costs(trained, cfgs, data, args.interleave, args.seed) if args.interleave else {}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["timestamp", "dataset", "n_train", "method", "pairing", "sigma", "lr", "iterations", "train_seconds",
               "seconds_per_iteration", "interleaved_seconds_per_iteration_start",
               "interleaved_seconds_per_iteration_end", "best_iteration", "best_val_nll",
               "test_nll", "test_nll_sem", "eval_trace", "train_nfe", "test_nfe", "target", "seconds_to_target",
               "target_time_kind", "host", "threads"]
    summary = out / "flow_matching.csv"
    new = not summary.is_file()
    with open(summary, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        for res in results:
            writer.writerow({**res, "timestamp": stamp, "dataset": args.dataset, "n_train": args.n_train,
                             "target": target, "host": platform.node(), "threads": args.threads,
                             "interleaved_seconds_per_iteration_start": start_costs.get(res["method"], ""),
                             "interleaved_seconds_per_iteration_end": end_costs.get(res["method"], "")})
    with open(out / f"flow_matching_trajectory_{args.dataset}.csv", "a", newline="") as handle:
        cols = ["timestamp", "method", "iteration", "epoch", "train_seconds", "val_nll", "val_nll_sem", "val_nfe",
                "train_nfe", "val_seconds"]
        writer = csv.DictWriter(handle, fieldnames=cols, extrasaction="ignore")
        if handle.tell() == 0:
            writer.writeheader()
        for res in results:
            for row in res["trajectory"]:
                writer.writerow({**row, "timestamp": stamp})

    print(f"\n{args.dataset}, n_train {args.n_train}, target NLL {target} (validation), eval trace "
          f"{cfg_ml['flow']['trace_eval']}")
    print(f"{'method':8} {'iters':>6} {'train s':>9} {'s/it':>7} {'best val':>9} {'test NLL':>14} {'eval NFE':>8} "
          f"{'train NFE':>9}  time to target")
    for r in results:
        print(f"{r['method']:8} {r['iterations']:6d} {r['train_seconds']:9.1f} {r['seconds_per_iteration']:7.3f} "
              f"{r['best_val_nll']:9.3f} {r['test_nll']:8.3f}+-{r['test_nll_sem']:.3f} {r['test_nfe']:8.1f} "
              f"{r['train_nfe']:9.1f}  {r['seconds_to_target'] or float('nan'):.1f} s ({r['target_time_kind']})")
    for when, costs in (("initial", start_costs), ("selected", end_costs)):
        if "ml" in costs and "fm" in costs:
            print(f"interleaved at the {when} weights ({args.interleave} each): ML {costs['ml']:.3f} s/it, "
                  f"FM {costs['fm']:.3f} s/it, ratio {costs['ml'] / costs['fm']:.1f}x per iteration")
    by = {r["method"]: r for r in results}
    if "ml" in by and "fm" in by and by["fm"]["seconds_to_target"]:
        ratio = by["ml"]["seconds_to_target"] / by["fm"]["seconds_to_target"]
        print(f"training-time ratio to reach NLL {target}: {ratio:.1f}x (ML {by['ml']['target_time_kind']})")


if __name__ == "__main__":
    main()
