"""The authors' code (vgsatorras/en_flows), timed at the benchmarks' settings for side-by-side rows.

Nothing of theirs is vendored: pass the folder of a checkout (`--authors DIR`; e.g. `git clone
https://github.com/vgsatorras/en_flows`). Their E-NF for DW4/LJ13 is `egnn_dynamics` in an FFJORD with the
adjoint solver, dopri5 at rtol = atol = 1e-4 (the values they train and test at: they never call `.eval()`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
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


def training_step(path: str | Path, x: torch.Tensor) -> Callable[[], int]:
    """One training iteration of their E-NF (their loss, AdamW amsgrad) on batch `x` (B, N, D); returns its NFE."""
    mod = _import_authors(path)
    torch.manual_seed(0)
    flow, prior, args = _their_flow(mod, x.shape[1], x.shape[2])
    opt = torch.optim.AdamW(flow.parameters(), lr=5e-4, amsgrad=True, weight_decay=1e-12)

    def step() -> int:
        opt.zero_grad()
        loss, _, _, _ = mod.losses.compute_loss_and_nll(args, flow, prior, x)
        loss.backward()
        opt.step()
        return flow.odefunc.num_evals  # forward and adjoint evaluations of the iteration

    return step


def exact_nll_step(path: str | Path, x: torch.Tensor, batch_size: int) -> Callable[[], int]:
    """Their exact-trace NLL of all of `x` in batches of `batch_size`, as their test loop; returns NFE per solve."""
    mod = _import_authors(path)
    torch.manual_seed(0)
    flow, prior, args = _their_flow(mod, x.shape[1], x.shape[2])
    flow.set_trace("exact")

    def step() -> int:
        nfes = []
        with torch.no_grad():
            for batch in x.split(batch_size):
                mod.losses.compute_loss_and_nll(args, flow, prior, batch)
                nfes.append(flow.odefunc.num_evals)
        return round(sum(nfes) / len(nfes))

    return step
