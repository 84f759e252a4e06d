"""Samples of a fixed-size particle flow with the log-density of each, and the flow's log-density of data.

log q of a sample comes from the same reverse solve that made it (the change of log-density is integrated along
the path), so a sample and its density are consistent; the trace is exact by default (DW4: 8 coordinates, LJ13:
39; a Hutchinson estimate would add noise inside the exponential and bias the ESS low). Failed solves give NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from enf.config import TRACES
from enf.errors import EnfError, NumericalError
from enf.models.flows.base import DensityModel
from enf.models.flows.distributions import sample_com_free_gaussian


def _check_fixed_shape(model: DensityModel) -> tuple[int, int]:
    """The (particles, n_dim) of a model of fixed-size configurations; refuse a model of variable-size samples."""
    shape = model.event_shape
    if shape is None:
        raise EnfError(f"Boltzmann evaluation needs a model of fixed-size particle configurations (DW4, LJ13); "
                       f"got a {type(model).__name__}")
    return shape


@torch.no_grad()
def _sample_batch(model: DensityModel, z: Tensor, trace: str) -> tuple[Tensor, Tensor, int]:
    """Reverse-solve base draws z (t = 1) to samples x (t = 0) with log q(x) from the same solve."""
    x, log_q = model.decode_with_log_prob(z, trace=trace)
    return x, log_q, model.last_nfe


def _sample_robust(model: DensityModel, z: Tensor, trace: str) -> tuple[Tensor, Tensor, list[int]]:
    """`_sample_batch`, splitting a batch whose solve fails so that one bad draw fails alone (NaN outputs)."""
    try:
        x, log_q, nfe = _sample_batch(model, z, trace)
        return x, log_q, [nfe]
    except NumericalError:
        if z.shape[0] == 1:
            return torch.full_like(z, math.nan), z.new_full((1,), math.nan), []
        half = z.shape[0] // 2
        x1, l1, n1 = _sample_robust(model, z[:half], trace)
        x2, l2, n2 = _sample_robust(model, z[half:], trace)
        return torch.cat([x1, x2]), torch.cat([l1, l2]), n1 + n2


@torch.no_grad()
def sample_with_log_prob(model: DensityModel, n: int, batch_size: int = 500, trace: str = "exact",
                         generator: torch.Generator | None = None) -> dict[str, Any]:
    """n samples of a particle flow with log q of each from its own reverse solve; failed solves are NaN."""
    n_particles, n_dim = _check_fixed_shape(model)
    if trace not in TRACES:
        raise EnfError(f"trace must be one of {TRACES}, got {trace!r}")
    p = next(model.parameters())
    xs, log_qs, nfes = [], [], []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        z = sample_com_free_gaussian((size, n_particles, n_dim), generator=generator, dtype=p.dtype)
        x, log_q, nfe = _sample_robust(model, z.to(p.device), trace)
        xs.append(x.cpu())
        log_qs.append(log_q.double().cpu())
        nfes += nfe
    x, log_q = torch.cat(xs), torch.cat(log_qs)
    failed = ~(torch.isfinite(x).flatten(1).all(1) & torch.isfinite(log_q))
    return {"positions": x, "log_q": log_q, "failed": failed,
            "nfe_per_solve": float(np.mean(nfes)) if nfes else math.nan}


@torch.no_grad()
def data_log_prob(model: DensityModel, positions: Tensor, batch_size: int = 500, trace: str = "exact") -> Tensor:
    """log q(x) (n,) of configurations under a particle flow (forward solve; the model's own NLL)."""
    _check_fixed_shape(model)
    p = next(model.parameters())
    out = []
    for start in range(0, positions.shape[0], batch_size):
        x = positions[start:start + batch_size].to(device=p.device, dtype=p.dtype)
        out.append(-model.nll({"positions": x}, trace=trace)["nll"].double().cpu())
    return torch.cat(out)
