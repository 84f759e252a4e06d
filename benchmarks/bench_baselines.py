"""Cost of the baseline vector fields at their protocol defaults: one row per model and data set.

For each model and data set it builds the model exactly as `enf train` would (registered defaults, the data
set's batch size) and times, on random centred configurations of the right shape:
  field_s   one training-like evaluation of the field alone: forward, the divergence as training computes it
            (one Hutchinson vector-Jacobian product, or the closed form), and the backward pass to the weights;
  iter_s    one full training iteration: augmentation where the model's config asks for it, the CNF solve with
            its trace, the NLL, backward and the optimiser step;
  nfe       function evaluations per solve in those iterations (of an untrained model: training changes it).
Prints a table and writes benchmarks/results/bench_baselines.csv.

    python benchmarks/bench_baselines.py [--models gnf,...] [--datasets dw4,...] [--iters 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from enf.config import resolve
from enf.geometry import remove_mean
from enf.models import build_model
from enf.training import augment

BASELINES = ("gnf", "gnf_att", "gnf_att_aug", "simple_dynamics", "kernel_dynamics")
DATASETS = {"dw4": (4, 2, 2.0), "lj13": (13, 3, 1.0), "qm9_positional": (19, 3, 1.5)}  # particles, dim, scale
OUT = Path(__file__).resolve().parent / "results" / "bench_baselines.csv"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Mean wall seconds of `fn` over `repeats` calls, after one untimed warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def bench_one(model_name: str, dataset: str, iters: int, device: torch.device,
              dtype: torch.dtype) -> dict[str, Any]:
    """Time one model on one data set; see the module docstring for the columns."""
    torch.manual_seed(0)
    cfg = resolve(dataset, model_name)
    model = build_model(cfg).to(device=device, dtype=dtype)
    field = model.cnf.field
    n_particles, n_dim, scale = DATASETS[dataset]
    batch = int(cfg["train"]["batch_size"])
    x = remove_mean(torch.randn(batch, n_particles, n_dim, device=device, dtype=dtype) * scale)
    t = torch.tensor(0.5, device=device, dtype=dtype)

    def field_step() -> None:
        xg = x.clone().requires_grad_(True)
        v = field(t, xg)
        if field.closed_form_divergence:
            div = field.divergence(t, xg)
        else:
            e = torch.randn_like(xg)
            div = (torch.autograd.grad(v, xg, e, create_graph=True)[0] * e).sum()
        (v.pow(2).sum() + div.sum()).backward()
        field.zero_grad(set_to_none=True)

    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["train"]["lr"]), amsgrad=True, weight_decay=1e-12)
    weight = float(cfg["flow"]["regularization"])
    nfes: list[int] = []

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        data = augment({"positions": x}) if cfg["train"]["augment_rotation"] else {"positions": x}
        out = model.nll(data, trace=cfg["flow"]["trace_train"])
        (out["nll"].mean() + weight * out["reg"].mean()).backward()
        opt.step()
        nfes.append(model.cnf.last_nfe)

    field_s = timed(field_step, max(3 * iters, 3), device)
    iter_s = timed(train_step, iters, device)
    return {"model": model_name, "dataset": dataset, "batch": batch, "device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "params": sum(p.numel() for p in field.parameters()),
            "rtol": cfg["flow"]["rtol"], "atol": cfg["flow"]["atol"],
            "trace": "closed form" if field.closed_form_divergence else cfg["flow"]["trace_train"],
            "field_s": field_s, "iter_s": iter_s, "nfe": sum(nfes[1:]) / max(len(nfes) - 1, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(BASELINES), help="comma-separated model names")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: dw4, lj13, qm9_positional")
    p.add_argument("--iters", type=int, default=3, help="timed training iterations per row (after a warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = []
    header = f"{'model':<16}{'dataset':<16}{'batch':>6}{'params':>9}{'trace':>13}{'field s':>10}{'iter s':>9}{'nfe':>7}"
    print(header)
    for dataset in args.datasets.split(","):
        for name in args.models.split(","):
            row = bench_one(name, dataset, args.iters, device, dtype)
            rows.append(row)
            print(f"{name:<16}{dataset:<16}{row['batch']:>6}{row['params']:>9}{row['trace']:>13}"
                  f"{row['field_s']:>10.4f}{row['iter_s']:>9.3f}{row['nfe']:>7.1f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
