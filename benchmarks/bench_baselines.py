"""Cost of the baseline vector fields at their protocol defaults: one row per model and data set.

For each model and data set it builds the model exactly as `enf train` would (registered defaults, the data
set's batch size) and times, on random centred configurations of the right shape:
  field_s   one training-like evaluation of the field alone: forward, the divergence as training computes it
            (one Hutchinson vector-Jacobian product, or the closed form), and the backward pass to the weights;
  iter_s    one full training iteration: augmentation where the model's config asks for it, the CNF solve with
            its trace, the NLL, backward and the optimiser step;
  nfe       function evaluations per solve in those iterations (of an untrained model: training changes it);
  act_gb    tensors autograd keeps for the backward pass of one iteration with direct back-propagation (they
            grow with batch x NFE; the adjoint method keeps about one evaluation's worth instead).
An iteration whose activations would exceed --max-gb (estimated from batch 8, linear in the batch) is not run;
its row gives the estimate. Prints a table and writes benchmarks/results/bench_baselines.csv.

    python benchmarks/bench_baselines.py [--models gnf,...] [--datasets dw4,...] [--iters 3] [--device cpu]
                                         [--adjoint] [--max-gb 12]
"""

from __future__ import annotations

import argparse
import csv
import math
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


def timed(fn: Callable[[], Any], repeats: int, device: torch.device, warmup: bool = True) -> float:
    """Mean wall seconds of `fn` over `repeats` calls (after one untimed warm-up call unless told not to)."""
    if warmup:
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def saved_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves for the backward pass while `fn` runs."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def bench_one(model_name: str, dataset: str, iters: int, device: torch.device, dtype: torch.dtype,
              adjoint: bool | None = None, max_gb: float = math.inf) -> dict[str, Any]:
    """Time one model on one data set; see the module docstring for the columns."""
    torch.manual_seed(0)
    cfg = resolve(dataset, model_name)
    model = build_model(cfg).to(device=device, dtype=dtype)
    adjoint = bool(cfg["flow"]["adjoint"]) if adjoint is None else adjoint
    model.cnf.adjoint = adjoint
    field = model.cnf.field
    n_particles, n_dim, scale = DATASETS[dataset]
    batch = int(cfg["train"]["batch_size"])
    data = remove_mean(torch.randn(batch, n_particles, n_dim, device=device, dtype=dtype) * scale)
    t = torch.tensor(0.5, device=device, dtype=dtype)

    def field_step(x: torch.Tensor) -> None:
        x = x.clone().requires_grad_(True)
        v = field(t, x)
        if field.closed_form_divergence:
            div = field.divergence(t, x)
        else:
            e = torch.randn_like(x)
            div = (torch.autograd.grad(v, x, e, create_graph=True)[0] * e).sum()
        (v.pow(2).sum() + div.sum()).backward()
        field.zero_grad(set_to_none=True)

    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["train"]["lr"]), amsgrad=True, weight_decay=1e-12)
    weight = float(cfg["flow"]["regularization"])
    nfes: list[int] = []

    def train_step(x: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        inputs = augment({"positions": x}) if cfg["train"]["augment_rotation"] else {"positions": x}
        out = model.nll(inputs, trace=cfg["flow"]["trace_train"])
        (out["nll"].mean() + weight * out["reg"].mean()).backward()
        opt.step()
        nfes.append(model.last_nfe)

    field_s = timed(lambda: field_step(data), max(3 * iters, 3), device)
    probe = 8
    act_gb = saved_bytes(lambda: train_step(data[:probe])) / 1e9 * batch / probe
    note = ""
    if adjoint or act_gb <= max_gb:
        nfes.clear()
        if adjoint:
            act_gb = math.nan
            iter_s = timed(lambda: train_step(data), iters, device)
        else:  # the measured iteration is the warm-up
            act_gb = saved_bytes(lambda: train_step(data)) / 1e9
            iter_s = timed(lambda: train_step(data), iters, device, warmup=False)
        nfe = sum(nfes[1:]) / max(len(nfes) - 1, 1)
    else:
        iter_s, nfe = math.nan, float(nfes[-1])
        note = f"not run: needs ~{act_gb:.0f} GB (estimate from batch {probe}); nfe of that probe"
    return {"model": model_name, "dataset": dataset, "batch": batch, "device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "params": sum(p.numel() for p in field.parameters()),
            "rtol": cfg["flow"]["rtol"], "atol": cfg["flow"]["atol"], "adjoint": adjoint,
            "trace": "closed form" if field.closed_form_divergence else cfg["flow"]["trace_train"],
            "field_s": field_s, "iter_s": iter_s, "nfe": nfe, "act_gb": act_gb, "note": note}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(BASELINES), help="comma-separated model names")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: dw4, lj13, qm9_positional")
    p.add_argument("--iters", type=int, default=3, help="timed training iterations per row (after a warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--adjoint", action="store_true", default=None,
                   help="adjoint gradients (default: the config's flow.adjoint)")
    p.add_argument("--max-gb", type=float, default=12.0, help="skip iterations whose activations exceed this")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{'model':<16}{'dataset':<16}{'batch':>6}{'params':>9}{'trace':>13}{'field s':>10}{'iter s':>9}"
          f"{'nfe':>7}{'act GB':>8}  note")
    with open(args.out, "w", newline="") as handle:  # row by row, so that a killed run keeps what it measured
        writer = None
        for dataset in args.datasets.split(","):
            for name in args.models.split(","):
                row = bench_one(name, dataset, args.iters, device, dtype, args.adjoint, args.max_gb)
                if writer is None:
                    writer = csv.DictWriter(handle, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                handle.flush()
                print(f"{name:<16}{dataset:<16}{row['batch']:>6}{row['params']:>9}{row['trace']:>13}"
                      f"{row['field_s']:>10.4f}{row['iter_s']:>9.3f}{row['nfe']:>7.1f}{row['act_gb']:>8.2f}  "
                      f"{row['note']}", flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
