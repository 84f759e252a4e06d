"""The Boltzmann-generator evaluation of a particle flow against its energy (DW4, LJ13).

Reverse ESS and log Z from model samples with their densities (sampling.py, weights.py), forward ESS and log Z on
target data, energy and pair-distance histograms of data, model and reweighted samples with their Jensen-Shannon
divergences (histograms.py). Failed solves and non-finite energies get weight zero but still count in n.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from enf.data.energies import PairEnergy
from enf.errors import EnfError
from enf.evaluation.boltzmann.histograms import histogram_set, histogram_summary, js_or_none
from enf.evaluation.boltzmann.sampling import data_log_prob, sample_with_log_prob
from enf.evaluation.boltzmann.weights import (
    forward_ess,
    log_partition_forward,
    log_partition_reverse,
    normalised_weights,
    reverse_ess,
)
from enf.geometry import pair_distances, remove_mean
from enf.models.flows.base import DensityModel


def boltzmann_evaluation(model: DensityModel, energy: PairEnergy, data_positions: Tensor, n_samples: int,
                         batch_size: int = 500, trace: str = "exact", seed: int = 0) -> dict[str, Any]:
    """Reverse ESS from `n_samples` model samples, forward ESS on `data_positions`, histograms and log Z estimates."""
    if n_samples < 1:
        raise EnfError(f"the number of Boltzmann samples must be positive, got {n_samples}")
    if tuple(data_positions.shape[1:]) != energy.event_shape:
        raise EnfError(f"data positions have shape {tuple(data_positions.shape)}; the {energy.name} energy needs "
                       f"(samples, {energy.n_particles}, {energy.n_dim})")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # Hutchinson probes, if any
    s = sample_with_log_prob(model, n_samples, batch_size, trace, gen)
    x = s["positions"].double()
    with torch.no_grad():
        e_model = energy.energy(torch.nan_to_num(x, nan=0.0))
    e_model = torch.where(s["failed"], torch.full_like(e_model, math.nan), e_model)
    log_w = -e_model / energy.temperature - s["log_q"]
    sample_seconds = time.perf_counter() - start

    start = time.perf_counter()
    data = remove_mean(data_positions.double())
    e_data = energy.energy(data)
    log_q_data = data_log_prob(model, data, batch_size, trace)
    log_w_data = -e_data / energy.temperature - log_q_data
    data_seconds = time.perf_counter() - start

    weights = normalised_weights(log_w)
    h, e_edges, d_edges = histogram_set(e_data, e_model, pair_distances(data), pair_distances(x), weights)
    hi = float(e_data.max())
    finite = torch.isfinite(e_model)
    return {
        "energy": energy.describe(),
        "trace": trace,
        "n_samples": n_samples,
        "n_failed": int(s["failed"].sum()),
        "n_data": int(data.shape[0]),
        "reverse_ess": reverse_ess(log_w),
        "forward_ess": forward_ess(log_w_data),
        "log_z_reverse": log_partition_reverse(log_w),
        "log_z_forward": log_partition_forward(log_w_data),
        "mean_energy_data": float(e_data.mean()),
        "mean_energy_model": float(e_model[finite].mean()) if bool(finite.any()) else math.nan,
        "mean_energy_reweighted": float((weights * torch.nan_to_num(e_model, nan=0.0)).sum())
        if float(weights.sum()) > 0 else math.nan,
        "model_energy_above_data_max": float((e_model[finite] > hi).double().mean()) if bool(finite.any())
        else math.nan,
        "js_energy_model": js_or_none(h["energy_data"], h["energy_model"]),
        "js_energy_reweighted": js_or_none(h["energy_data"], h["energy_reweighted"]),
        "js_distance_model": js_or_none(h["distance_data"], h["distance_model"]),
        "js_distance_reweighted": js_or_none(h["distance_data"], h["distance_reweighted"]),
        "nfe_per_sampling_solve": s["nfe_per_solve"],
        "sample_seconds": sample_seconds,
        "data_seconds": data_seconds,
        "histograms": histogram_summary(h, e_edges, d_edges),
    }
