"""Test-set likelihood: mean NLL in nats per sample with its standard error, batched and masked."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from enf.errors import NumericalError
from enf.models.flows.base import DensityModel


def batches(data: dict[str, Tensor], batch_size: int, order: Tensor | None = None,
            drop_last: bool = False) -> list[dict[str, Tensor]]:
    """Split a dict of equally long tensors into batches (optionally in the given order)."""
    n = next(iter(data.values())).shape[0]
    idx = order if order is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [{k: v[idx[i:i + batch_size]] for k, v in data.items()} for i in range(0, stop, batch_size)]


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def evaluate_nll(model: DensityModel, data: dict[str, Tensor], batch_size: int, trace: str,
                 probes: int = 1, device: torch.device | str = "cpu", progress: Any = None,
                 keep_samples: bool = False) -> dict[str, Any]:
    """Mean NLL over `data`, its standard error, the count and the mean function evaluations per solve.

    With Hutchinson's trace, `probes` > 1 averages the log-likelihood over that many probes per sample
    (each a separate solve), which cuts the estimator's noise, and reports that noise: `probe_noise_sd`, the
    standard deviation of one probe's NLL around the sample's mean over probes (pooled over samples). The exact
    trace and a field's closed-form divergence (recorded as trace "closed form") ignore `probes`.
    `keep_samples` adds `samples`, every sample's NLL per probe (n x probes, float64).
    """
    device = torch.device(device)
    model.eval()
    per_sample: list[Tensor] = []
    nfes: list[int] = []
    start = time.perf_counter()
    closed_form = bool(model.cnf.field.closed_form_divergence)
    n_probes = 1 if trace == "exact" or closed_form else max(int(probes), 1)
    with torch.no_grad():
        for batch in batches(data, batch_size):
            batch = to_device(batch, device)
            values = []
            for _ in range(n_probes):
                out = model.nll(batch, trace=trace)
                values.append(out["nll"].double())
                nfes.append(model.last_nfe)
            per_sample.append(torch.stack(values, 1).cpu())
            if progress is not None:
                progress.update(values[0].shape[0])
    per_probe = torch.cat(per_sample)
    nll = per_probe.mean(1)
    n_bad = int((~torch.isfinite(nll)).sum())
    if n_bad:
        raise NumericalError(f"{n_bad} of {nll.numel()} samples got a non-finite NLL")
    n = nll.numel()
    result: dict[str, Any] = {
        "nll": float(nll.mean()),
        "nll_sem": float(nll.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"),
        "n": n,
        "trace": "closed form" if closed_form else trace,  # the field's own divergence: no estimator ran
        "probes": n_probes,
        "nfe_per_solve": float(sum(nfes) / len(nfes)),
        "seconds": time.perf_counter() - start,
    }
    if n_probes > 1:
        result["probe_noise_sd"] = float(per_probe.var(1, unbiased=True).mean().sqrt())
    if keep_samples:
        result["samples"] = per_probe
    return result
