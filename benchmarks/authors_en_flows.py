"""The authors' code (vgsatorras/en_flows), timed at the benchmarks' settings for side-by-side rows.

Nothing of theirs is vendored: pass the folder of a checkout (`--authors DIR`; e.g. `git clone
https://github.com/vgsatorras/en_flows`). Their E-NF for DW4/LJ13 is `egnn_dynamics` in an FFJORD with the
adjoint solver, dopri5 at rtol = atol = 1e-4 (the values they train and test at: they never call `.eval()`).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch


def _import_authors(path: str | Path) -> SimpleNamespace:
    """Their modules, imported from a checkout at `path` (refused with a clear message if it is not one)."""
    root = Path(path).resolve()
    if not (root / "dw4_experiment" / "models.py").is_file():
        raise SystemExit(f"--authors {root}: not a checkout of vgsatorras/en_flows (no dw4_experiment/models.py)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from dw4_experiment import losses  # type: ignore[import-not-found]
    from dw4_experiment.models import get_model  # type: ignore[import-not-found]
    from flows.distributions import PositionPrior  # type: ignore[import-not-found]

    return SimpleNamespace(get_model=get_model, losses=losses, PositionPrior=PositionPrior)


def _their_flow(mod: SimpleNamespace, n_particles: int, n_dims: int) -> tuple[Any, Any, SimpleNamespace]:
    """Their E-NF with the arguments of main_dw4_lj13.py's defaults for E-NF (nf 32, 3 layers, attention)."""
    args = SimpleNamespace(model="egnn_dynamics", nf=32, n_layers=3, tanh=True, attention=True,
                           condition_time=True, x_aggregation="sum", hutch_noise="bernoulli",
                           ode_regularization=0, trace="hutch", data="dw4" if n_particles == 4 else "lj13")
    flow = mod.get_model(args, n_particles * n_dims, n_particles)
    return flow, mod.PositionPrior(), args


def time_training(path: str | Path, x: torch.Tensor, iters: int) -> dict[str, float]:
    """Median seconds per training iteration (their loss, AdamW amsgrad) on batch `x` (B, N, D), and NFE."""
    mod = _import_authors(path)
    torch.manual_seed(0)
    flow, prior, args = _their_flow(mod, x.shape[1], x.shape[2])
    opt = torch.optim.AdamW(flow.parameters(), lr=5e-4, amsgrad=True, weight_decay=1e-12)
    times, nfes = [], []
    for i in range(iters + 1):
        start = time.perf_counter()
        opt.zero_grad()
        loss, _, _, _ = mod.losses.compute_loss_and_nll(args, flow, prior, x)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
            nfes.append(flow.odefunc.num_evals)
    return {"seconds": statistics.median(times), "nfe": statistics.mean(nfes)}


def time_exact_nll(path: str | Path, x: torch.Tensor, batch_size: int, iters: int) -> dict[str, float]:
    """Seconds for their exact-trace test NLL of all of `x`, in batches of `batch_size` as their test loop."""
    mod = _import_authors(path)
    torch.manual_seed(0)
    flow, prior, args = _their_flow(mod, x.shape[1], x.shape[2])
    flow.set_trace("exact")
    times, nfes = [], []
    for _ in range(iters):
        start = time.perf_counter()
        with torch.no_grad():
            for batch in x.split(batch_size):
                mod.losses.compute_loss_and_nll(args, flow, prior, batch)
                nfes.append(flow.odefunc.num_evals)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "nfe": statistics.mean(nfes)}
