"""A particle flow as a Boltzmann generator: importance weights against the known energy (DW4, LJ13).

For model samples x ~ q the log weights are log w = -E(x) / T - log q(x); the normalised reverse effective sample
size is (sum w)^2 / (n sum w^2) in [0, 1] (1 when q is the target). For test data x ~ p the forward ESS is
n^2 / (sum w * sum 1/w), the same quantity estimated from the target's side (Midgley et al. 2023): it is not
fooled by a model that misses modes. log q of a sample comes from the same reverse solve that made it (the
change of log-density is integrated along the path), so a sample and its density are consistent; the trace is
exact by default (DW4: 8 coordinates, LJ13: 39; a Hutchinson estimate would add noise inside the exponential
and bias the ESS low). Failed solves and non-finite energies get weight zero but still count in n.

Also: energy histograms of data, model samples and reweighted samples, pair-distance histograms, the
Jensen-Shannon divergences between them, estimates of log Z, and a figure.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from enf.config import TRACES
from enf.energies import PairEnergy, make_energy
from enf.errors import EnfError, NumericalError
from enf.flows.base import DensityModel
from enf.flows.distributions import sample_com_free_gaussian
from enf.geometry import remove_mean
from enf.metrics.distances import js_divergence

BOLTZMANN_DATASETS = ("dw4", "lj13")
ENERGY_BINS = 80
DISTANCE_BINS = 100


# -- effective sample sizes --------------------------------------------------------------------------------
def _clean(log_w: Tensor) -> Tensor:
    """float64 log weights with NaN mapped to -inf (weight zero)."""
    log_w = log_w.detach().double().flatten()
    return torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)


def reverse_ess(log_w: Tensor) -> float:
    """Normalised ESS (sum w)^2 / (n sum w^2) in [0, 1] of importance weights given as logs (-inf: weight 0)."""
    log_w = _clean(log_w)
    n = log_w.numel()
    if n == 0:
        raise EnfError("reverse_ess: no weights")
    if torch.isposinf(log_w).any():
        return 1.0 / n  # one infinite weight carries everything
    if torch.isneginf(log_w).all():
        return 0.0
    return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / n)


def forward_ess(log_w: Tensor) -> float:
    """Normalised forward ESS n^2 / (sum w * sum 1/w) in [0, 1] from log weights of samples of the target."""
    log_w = _clean(log_w)
    n = log_w.numel()
    if n == 0:
        raise EnfError("forward_ess: no weights")
    if not torch.isfinite(log_w).all():
        return 0.0  # a target sample the model cannot produce (or produces infinitely often)
    value = 2 * math.log(n) - torch.logsumexp(log_w, 0) - torch.logsumexp(-log_w, 0)
    return float(torch.exp(value).clamp(max=1.0))


def log_partition_reverse(log_w: Tensor) -> float:
    """log Z estimated by importance sampling from the model: log mean w (a stochastic lower bound in expectation)."""
    log_w = _clean(log_w)
    return float(torch.logsumexp(log_w, 0) - math.log(log_w.numel()))


def log_partition_forward(log_w: Tensor) -> float:
    """log Z estimated from target samples: -log mean(1/w) (a stochastic upper bound in expectation)."""
    log_w = _clean(log_w)
    return float(-(torch.logsumexp(-log_w, 0) - math.log(log_w.numel())))


# -- model densities -------------------------------------------------------------------------------------------
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


# -- histograms ------------------------------------------------------------------------------------------------
def pair_distances(x: Tensor) -> Tensor:
    """All unique pair distances (B, N (N - 1) / 2) of configurations (B, N, D)."""
    i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1)
    return (x[:, i] - x[:, j]).pow(2).sum(-1).sqrt()


def histogram(values: Tensor, edges: np.ndarray, weights: Tensor | None = None) -> np.ndarray:
    """Weighted counts in [underflow, bins..., overflow] (len(edges) + 1,); non-finite values are skipped."""
    v = values.detach().double().cpu().numpy()
    w = np.ones_like(v) if weights is None else np.broadcast_to(weights.detach().double().cpu().numpy(), v.shape)
    keep = np.isfinite(v) & np.isfinite(w)
    v, w = v[keep], w[keep]
    idx = np.searchsorted(edges, v, side="right")  # 0: below edges[0]; len(edges): at or above edges[-1]
    return np.bincount(idx, weights=w, minlength=len(edges) + 1).astype(np.float64)


def _density(counts: np.ndarray, edges: np.ndarray) -> list[float]:
    """Inner-bin densities (probability per unit) normalised by the total mass including under/overflow."""
    total = counts.sum()
    if total <= 0:
        return [0.0] * (len(edges) - 1)
    return (counts[1:-1] / total / np.diff(edges)).tolist()


def _js(p: np.ndarray, q: np.ndarray) -> float | None:
    return js_divergence(p, q) if p.sum() > 0 and q.sum() > 0 else None


def _normalised_weights(log_w: Tensor) -> Tensor:
    log_w = _clean(log_w)
    if torch.isneginf(log_w).all():
        return torch.zeros_like(log_w)
    return torch.exp(log_w - torch.logsumexp(log_w, 0))


# -- the evaluation -------------------------------------------------------------------------------------------------
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

    weights = _normalised_weights(log_w)
    lo, hi = float(e_data.min()), float(e_data.max())
    span = max(hi - lo, 1e-6)
    e_edges = np.linspace(lo - 0.1 * span, hi + 0.25 * span, ENERGY_BINS + 1)
    d_data, d_model = pair_distances(data), pair_distances(x)
    d_edges = np.linspace(0.0, 1.25 * float(d_data.max()), DISTANCE_BINS + 1)
    h = {
        "energy_data": histogram(e_data, e_edges),
        "energy_model": histogram(e_model, e_edges),
        "energy_reweighted": histogram(e_model, e_edges, weights),
        "distance_data": histogram(d_data, d_edges),
        "distance_model": histogram(d_model, d_edges),
        "distance_reweighted": histogram(d_model, d_edges, weights[:, None]),
    }
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
        "js_energy_model": _js(h["energy_data"], h["energy_model"]),
        "js_energy_reweighted": _js(h["energy_data"], h["energy_reweighted"]),
        "js_distance_model": _js(h["distance_data"], h["distance_model"]),
        "js_distance_reweighted": _js(h["distance_data"], h["distance_reweighted"]),
        "nfe_per_sampling_solve": s["nfe_per_solve"],
        "sample_seconds": sample_seconds,
        "data_seconds": data_seconds,
        "histograms": {
            "energy_edges": e_edges.tolist(),
            "distance_edges": d_edges.tolist(),
            **{f"{k}_density": _density(v, e_edges if k.startswith("energy") else d_edges) for k, v in h.items()},
            **{f"{k}_outside": [float(v[0] / v.sum()), float(v[-1] / v.sum())] if v.sum() > 0 else [0.0, 0.0]
               for k, v in h.items()},
        },
    }


def boltzmann_figure(result: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Energy and pair-distance histograms (data, model samples, reweighted samples) with the ESS in the title."""
    from enf.figures import plt, save_figure

    hist = result["histograms"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, kind, label in ((axes[0], "energy", "energy E(x)"), (axes[1], "distance", "pair distance")):
        edges = np.asarray(hist[f"{kind}_edges"])
        centres = 0.5 * (edges[1:] + edges[:-1])
        ax.fill_between(centres, hist[f"{kind}_data_density"], step="mid", alpha=0.3, color="k", label="data")
        ax.step(centres, hist[f"{kind}_model_density"], where="mid", color="tab:blue", label="model samples")
        ax.step(centres, hist[f"{kind}_reweighted_density"], where="mid", color="tab:red", ls="--",
                label="reweighted samples")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
    axes[0].legend(frameon=False, fontsize=8)
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}reverse ESS {100 * result['reverse_ess']:.2f}%, forward ESS "
                 f"{100 * result['forward_ess']:.2f}% ({result['n_samples']} samples, {result['n_failed']} failed, "
                 f"trace {result['trace']})", fontsize=10)
    save_figure(fig, path)


# -- the energy of a data set ------------------------------------------------------------------------------------
def _find_convention(obj: Any) -> str | None:
    """The LJ13 energy convention recorded anywhere in a data set's meta.json."""
    if isinstance(obj, dict):
        if obj.get("name") == "lj13" and obj.get("convention") in ("ordered", "unique"):
            return str(obj["convention"])
        for value in obj.values():
            found = _find_convention(value)
            if found:
                return found
    if isinstance(obj, list):
        for value in obj:
            found = _find_convention(value)
            if found:
                return found
    return None


def energy_for_data(dataset: str, data_path: str | Path) -> tuple[PairEnergy, str]:
    """The target energy of `dataset` and where its settings came from (meta.json beside the data, or default)."""
    if dataset not in BOLTZMANN_DATASETS:
        raise EnfError(f"Boltzmann evaluation needs a data set with a known energy ({', '.join(BOLTZMANN_DATASETS)}); "
                       f"this checkpoint is for {dataset!r}")
    if dataset == "dw4":
        return make_energy("dw4"), "protocol"
    meta = Path(data_path).parent / "meta.json"
    if meta.is_file():
        try:
            convention = _find_convention(json.loads(meta.read_text()))
        except json.JSONDecodeError:
            raise EnfError(f"{meta}: not valid JSON") from None
        if convention:
            return make_energy("lj13", convention), f"{meta}"
    return make_energy("lj13", "ordered"), "protocol default (ordered pairs; no convention found in meta.json)"


def evaluate_for_cli(model: DensityModel, cfg: dict[str, Any], data: dict[str, Tensor], data_path: str | Path,
                     n_samples: int, out_json: str | Path, trace: str = "exact", seed: int = 0,
                     batch_size: int | None = None) -> dict[str, Any]:
    """`enf evaluate --boltzmann N`: run the evaluation, write the figure beside `out_json`, return the numbers."""
    energy, source = energy_for_data(cfg["dataset"], data_path)
    result = boltzmann_evaluation(model, energy, data["positions"], n_samples,
                                  batch_size or int(cfg["train"]["eval_batch_size"]), trace, seed)
    out = Path(out_json)
    figure = out.with_name(f"{out.stem}_boltzmann.png")
    boltzmann_figure(result, figure, f"{cfg['model']['name']} on {cfg['dataset']}")
    result.update(energy_source=source, figure=str(figure))
    print(f"Boltzmann: reverse ESS {100 * result['reverse_ess']:.2f}%, forward ESS {100 * result['forward_ess']:.2f}%"
          f", log Z {result['log_z_reverse']:.2f} (reverse) / {result['log_z_forward']:.2f} (forward), "
          f"{result['n_failed']} of {n_samples} samples failed")
    return result
