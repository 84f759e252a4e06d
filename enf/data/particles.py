"""Generate the DW4 and LJ13 data sets by Metropolis MCMC, check that they follow their energies, write them.

The training pool comes from one run of parallel chains; validation and test from a second run with its own seed
(spawned from --seed), own starting states, burn-in and step-size adaptation, each split on its own chains: they
share nothing with the training pool. Samples are stored in draw-major order (first draw of every chain, then the
second, ...), so a training-set prefix spreads over chains, and stored draws are one IAT apart (nearly independent).
Before anything is written, every split must pass: configurational temperature 1 within its error, thinned split
R-hat below its target, and (LJ13) agreement with an independent OpenMM Langevin sampler.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from enf.data import figures
from enf.data.diagnostics import (
    autocorr_time,
    configurational_temperature,
    ks_two_sample,
    mean_and_se,
    one_pair_per_sample,
    rhat_noise,
    z_score,
)
from enf.data.energies import LJ13_CONVENTIONS, PairEnergy, make_energy
from enf.data.openmm_lj13 import langevin_sample, lattice_start
from enf.data.outputs import check_output, finish_output, writing
from enf.data.samplers import ChainResult, ParticleKernel, SamplerSettings, run_chains, settings_dict
from enf.errors import EnfError
from enf.geometry import pair_distances
from enf.io import read_json, save_npz

SPLITS = ("train", "valid", "test")
# Validation and test chains run together, apart from the training pool (own seed, own adaptation).
RUNS = {"train": ("train",), "eval": ("valid", "test")}
FIGURES = ("energy_hist.png", "pair_distance_hist.png", "energy_trace.png")
MAX_SAMPLES = 10_000_000
# A check fails beyond these many standard errors (several checks per data set, fixed seeds: a real error,
# such as the wrong LJ convention or temperature, lands tens of standard errors away).
Z_LIMIT = 4.0
KS_ALPHA = 1e-3
RHAT_SAMPLES_LIMIT = 1.05
LJ13_REFERENCE_MEAN_ENERGY = -42.97   # <E> of the ordered-pair LJ13 density (benchmarks/physical_floor.py: AIS)
QUICK_BURN_IN = 100
QUICK_SETTINGS = {"window": 50, "thin": 10}   # smoke tests: one short window, fixed thinning


@dataclass(frozen=True)
class Recipe:
    """Defaults for generating one particle data set (sizes in samples, burn-in in sweeps)."""

    n_train: int
    chains: int            # chains of the training pool
    eval_chains: int       # chains of each of the validation and test splits
    burn_in: int
    initial_step: float
    target_accept: float
    jump_prob: float
    jump_factor: float


RECIPES = {
    "dw4": Recipe(n_train=100_000, chains=4000, eval_chains=100, burn_in=300, initial_step=0.4,
                  target_accept=0.2, jump_prob=0.5, jump_factor=6.0),
    # LJ13: a low acceptance (large steps, about 0.25) halves the IAT against the textbook 0.4 (measured).
    "lj13": Recipe(n_train=10_000, chains=500, eval_chains=100, burn_in=500, initial_step=0.25,
                   target_accept=0.17, jump_prob=0.0, jump_factor=1.0),
}


@dataclass(frozen=True)
class OpenMMCheck:
    """Settings of the independent OpenMM Langevin cross-check of LJ13 (times in the energy's units)."""

    replicas: int = 50
    samples: int = 300
    interval: float = 1.0
    burn_in: float = 20.0
    dt: float = 0.01
    friction: float = 2.0


def _observables(name: str, energy: PairEnergy) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """Slow collective variables watched besides the energy: DW4's pair modes, LJ13's cluster size."""
    i, j = torch.triu_indices(energy.n_particles, energy.n_particles, offset=1)

    def dw4(x: torch.Tensor) -> dict[str, torch.Tensor]:
        d = (x[:, i] - x[:, j]).pow(2).sum(-1).sqrt()
        long = d > energy.d0
        return {"n_long_pairs": long.sum(-1).to(x.dtype), "pair01_long": long[:, 0].to(x.dtype)}

    def lj13(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"gyration": x.pow(2).sum((1, 2))}

    return dw4 if name == "dw4" else lj13


def _initial_states(name: str, chains: int, rng: np.random.Generator) -> torch.Tensor:
    if name == "lj13":
        x = lattice_start(chains, rng)
    else:
        x = rng.normal(scale=2.0, size=(chains, 4, 2))
        x -= x.mean(1, keepdims=True)
    return torch.as_tensor(x, dtype=torch.float64)


def _check_sizes(name: str, sizes: dict[str, int], chains: dict[str, int], burn_in: int, max_sweeps: int) -> None:
    for key, value in sizes.items():
        if not 1 <= value <= MAX_SAMPLES:
            raise EnfError(f"{name}: --n-{key} must be between 1 and {MAX_SAMPLES:,}, got {value}")
    for key, value in chains.items():
        if value < 2:
            raise EnfError(f"{name}: --{key.replace('_', '-')} must be at least 2 (R-hat compares chains), "
                           f"got {value}")
    if burn_in < 1 or max_sweeps <= burn_in:
        raise EnfError(f"{name}: need 1 <= --burn-in < --max-sweeps, got {burn_in} and {max_sweeps}")


def _mode_mixing(pair_trace: np.ndarray, long_pairs: np.ndarray) -> dict[str, Any]:
    """DW4: does each chain visit both pair-distance modes? From the every-sweep trace of pair (0, 1)."""
    frac = pair_trace.mean(1)                                # pair_trace: (chains, sweeps), 1 = long mode
    switches = np.abs(np.diff(pair_trace, axis=1)).sum(1)
    q = [0.0, 0.05, 0.5, 0.95, 1.0]
    return {
        "pair01_long_fraction_per_chain_quantiles": dict(zip(map(str, q), np.quantile(frac, q).tolist())),
        "pair01_switches_per_chain_quantiles": dict(zip(map(str, q), np.quantile(switches, q).tolist())),
        "chains_visiting_both_modes": float(((frac > 0) & (frac < 1)).mean()),
        "trace_chains": int(pair_trace.shape[0]), "sweeps_per_chain": int(pair_trace.shape[1]),
        "long_pair_fraction_of_samples": float(long_pairs.mean()),
        "n_long_pairs_distribution": np.bincount(long_pairs.sum(1), minlength=7).tolist(),
    }


def _split_diagnostics(name: str, energy: PairEnergy, pos: np.ndarray, sampler: dict[str, Any],
                       trace: dict[str, np.ndarray]) -> tuple[dict[str, Any], np.ndarray]:
    """Checks on the stored (float32) samples: energy, configurational temperature, pair distances, mixing."""
    x = torch.as_tensor(pos, dtype=torch.float64)
    e, grad, lap = energy.derivatives(x)
    e_np = e.numpy()
    mean_e, se_e = mean_and_se(e_np)
    t_conf, t_se = configurational_temperature(grad.pow(2).sum((1, 2)).numpy(), lap.numpy())
    d = pair_distances(pos)
    out: dict[str, Any] = {
        "n": int(pos.shape[0]),
        "mean_energy": mean_e, "mean_energy_se": se_e, "energy_std": float(e_np.std(ddof=1)),
        "configurational_temperature": t_conf, "configurational_temperature_se": t_se,
        "configurational_temperature_z": (t_conf - energy.temperature) / t_se,
        "mean_pair_distance": float(d.mean()),
        "max_abs_centre_of_mass": float(np.abs(pos.astype(np.float64).mean(1)).max()),
        "sampler": sampler,
    }
    if name == "dw4" and trace["pair01_long"].shape[0] > 0:
        out["mode_mixing"] = _mode_mixing(trace["pair01_long"], (d > energy.d0).astype(np.int64))
    return out, e_np


def _failures(split: str, diag: dict[str, Any]) -> list[str]:
    bad = []
    if abs(diag["configurational_temperature_z"]) > Z_LIMIT:
        bad.append(f"{split}: configurational temperature {diag['configurational_temperature']:.4f} +- "
                   f"{diag['configurational_temperature_se']:.4f} is not 1 (more than {Z_LIMIT} SE away)")
    sampler = diag["sampler"]
    worst = max(sampler["split_rhat_samples"].values(), default=1.0)
    # Draws one IAT apart keep a lag-1 correlation near e^-2, which inflates R-hat by about 0.25 / half-chain
    # length on top of its sampling noise; both are allowed for, with RHAT_SAMPLES_LIMIT as the floor.
    draws = sampler["samples_per_chain"]
    limit = max(RHAT_SAMPLES_LIMIT, 1 + 0.25 / max(draws // 2, 1) + 3 * rhat_noise(sampler["chains"], draws))
    if worst > limit:
        bad.append(f"{split}: split R-hat of the kept samples is {worst:.4f} (> {limit:.4f})")
    return bad


def compare_with_openmm(energy: PairEnergy, train_pos: np.ndarray, train_energy: np.ndarray, seed: int,
                        settings: OpenMMCheck, log: Callable[[str], None] = print) -> tuple[dict[str, Any], np.ndarray]:
    """Sample LJ13 with OpenMM Langevin dynamics; compare mean energy and pair distances with the MCMC pool."""
    log(f"OpenMM cross-check: {settings.replicas} clusters, {settings.samples * settings.interval:g} time units "
        "of Langevin dynamics each")
    res = langevin_sample(settings.replicas, settings.samples, settings.interval, settings.burn_in, seed,
                          convention=energy.convention, dt=settings.dt, friction=settings.friction)
    pos = res["positions"]                                   # (samples, replicas, 13, 3)
    e = energy.energy(torch.as_tensor(pos.reshape(-1, 13, 3))).numpy().reshape(pos.shape[:2])
    tau = autocorr_time(e.T)
    thin = max(1, math.ceil(tau))
    mean_md, se_md = mean_and_se(e.T)
    mean_mc, se_mc = mean_and_se(train_energy)
    z = z_score(mean_mc, se_mc, mean_md, se_md)
    rng = np.random.default_rng(seed)
    thinned = pos[::thin].reshape(-1, 13, 3)
    ks = ks_two_sample(one_pair_per_sample(train_pos, rng), one_pair_per_sample(thinned, rng))
    out = {
        "settings": res["settings"], "energy_iat_samples": tau, "thin": thin,
        "mean_energy": mean_md, "mean_energy_se": se_md, "mcmc_mean_energy": mean_mc, "mcmc_mean_energy_se": se_mc,
        "energy_z": z, "pair_distance_ks": ks, "z_limit": Z_LIMIT, "ks_alpha": KS_ALPHA,
        "passed": bool(abs(z) <= Z_LIMIT and ks["pvalue"] >= KS_ALPHA),
    }
    log(f"OpenMM: mean energy {mean_md:.3f} +- {se_md:.3f} vs MCMC {mean_mc:.3f} +- {se_mc:.3f} (z = {z:.2f}); "
        f"pair-distance KS p = {ks['pvalue']:.3g}")
    return out, e.reshape(-1)


def generate_particles(name: str, out_dir: str | Path, *, n_train: int | None = None, n_valid: int = 1000,
                       n_test: int = 1000, seed: int = 0, energy: str = "ordered", chains: int | None = None,
                       eval_chains: int | None = None, burn_in: int | None = None, max_sweeps: int = 20_000,
                       rhat_target: float = 1.01, openmm_check: bool = True, quick: bool = False,
                       force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate (or reuse) data set `name` ('dw4' or 'lj13') in `out_dir`; returns its meta.json content.

    `quick` (smoke tests only) skips the wait for equilibrium and records failed checks instead of refusing.
    """
    if name not in RECIPES:
        raise EnfError(f"unknown particle data set {name!r}; known: {', '.join(RECIPES)}")
    if name == "lj13" and energy not in LJ13_CONVENTIONS:
        raise EnfError(f"lj13: unknown --energy {energy!r}; use one of {', '.join(LJ13_CONVENTIONS)}")
    if name == "dw4" and energy != "ordered":
        raise EnfError("dw4 has one energy (sum over unique pairs); --energy applies to lj13 only")
    recipe = RECIPES[name]
    out_dir = Path(out_dir)
    sizes = {"train": recipe.n_train if n_train is None else n_train, "valid": n_valid, "test": n_test}
    n_chains = {"chains": recipe.chains if chains is None else chains,
                "eval_chains": recipe.eval_chains if eval_chains is None else eval_chains}
    burn_in = (QUICK_BURN_IN if quick else recipe.burn_in) if burn_in is None else burn_in
    _check_sizes(name, sizes, n_chains, burn_in, max_sweeps)
    if not 1.0 < rhat_target < 2.0:
        raise EnfError(f"{name}: --rhat-target must be in (1, 2), got {rhat_target}")
    args = {"dataset": name, "n_train": sizes["train"], "n_valid": n_valid, "n_test": n_test, "seed": seed,
            "energy": energy if name == "lj13" else "dw4", "burn_in": burn_in, "max_sweeps": max_sweeps,
            "rhat_target": rhat_target, "quick": bool(quick), **n_chains}
    if name == "lj13":
        args["openmm_check"] = bool(openmm_check)
    data_files = [f"{s}.npz" for s in SPLITS]
    if check_output(out_dir, name, args, data_files + list(FIGURES), force, log):
        return read_json(out_dir / "meta.json")

    start = time.perf_counter()
    cpu_start = time.process_time()
    target = make_energy(name, energy)
    settings = SamplerSettings(burn_in=burn_in, max_sweeps=max_sweeps, rhat_target=rhat_target,
                               initial_step=recipe.initial_step, target_accept=recipe.target_accept,
                               equilibrate=not quick, **(QUICK_SETTINGS if quick else {}))
    seeds = np.random.SeedSequence(seed).spawn(len(RUNS) + 1)
    positions: dict[str, np.ndarray] = {}
    energies: dict[str, np.ndarray] = {}
    diags: dict[str, Any] = {}
    traces: dict[str, ChainResult] = {}
    failures: list[str] = []
    for run, seq in zip(RUNS, seeds):
        # Chains per split, then one vectorised run for the splits that may share it (valid and test).
        alloc = {}
        for split in RUNS[run]:
            c = min(n_chains["chains" if run == "train" else "eval_chains"], sizes[split])
            alloc[split] = math.ceil(sizes[split] / math.ceil(sizes[split] / c))
        per_chain = max(math.ceil(sizes[s] / c) for s, c in alloc.items())
        total = sum(alloc.values())
        rng = np.random.default_rng(seq)
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        kernel = ParticleKernel(target, jump_prob=recipe.jump_prob, jump_factor=recipe.jump_factor)
        log(f"{name} {run}: " + ", ".join(f"{s} {sizes[s]:,} samples from {c:,} chains" for s, c in alloc.items())
            + f" ({per_chain} per chain)")
        result = run_chains(kernel, _initial_states(name, total, rng), per_chain, settings, gen,
                            observables=_observables(name, target), log=lambda msg, r=run: log(f"  {r}: {msg}"))
        traces[run] = result
        offset = 0
        for split, c in alloc.items():
            chains_of_split = slice(offset, offset + c)
            offset += c
            pos = result.samples[:, chains_of_split].reshape(per_chain * c, *target.event_shape)[:sizes[split]]
            pos = (pos - pos.mean(1, keepdim=True)).to(torch.float32).numpy()
            if not np.isfinite(pos).all():
                raise EnfError(f"{name} {split}: the sampler produced non-finite positions")
            trace = {k: v[chains_of_split] for k, v in result.trace.items()}
            diags[split], energies[split] = _split_diagnostics(name, target, pos, result.diagnostics, trace)
            diags[split]["chains"] = c
            positions[split] = pos
            failures += _failures(split, diags[split])
            log(f"  {split}: mean energy {diags[split]['mean_energy']:.3f} +- "
                f"{diags[split]['mean_energy_se']:.3f}, T_conf {diags[split]['configurational_temperature']:.4f} +- "
                f"{diags[split]['configurational_temperature_se']:.4f}")
        log(f"  {run}: acceptance {result.diagnostics['acceptance']:.3f}, thin {result.diagnostics['thin']}, "
            f"{result.diagnostics['seconds']:.1f} s")

    checks: dict[str, Any] = {"z_limit": Z_LIMIT, "rhat_samples_limit": RHAT_SAMPLES_LIMIT}
    checks["energy_ks_train_vs_test"] = ks_two_sample(energies["train"], energies["test"])
    checks["energy_ks_train_vs_valid"] = ks_two_sample(energies["train"], energies["valid"])
    openmm_energies = None
    if name == "lj13" and openmm_check:
        om_seed = int(np.random.default_rng(seeds[-1]).integers(0, 2**31 - 1))
        checks["openmm"], openmm_energies = compare_with_openmm(target, positions["train"], energies["train"],
                                                                om_seed, OpenMMCheck(), log)
        if not checks["openmm"]["passed"]:
            failures.append(f"OpenMM Langevin disagrees with the MCMC data: energy z = "
                            f"{checks['openmm']['energy_z']:.2f}, pair-distance KS p = "
                            f"{checks['openmm']['pair_distance_ks']['pvalue']:.3g}")
    if name == "lj13" and energy == "ordered":
        checks["protocol_mean_energy"] = {"reference": LJ13_REFERENCE_MEAN_ENERGY,
                                          "train_minus_reference": diags["train"]["mean_energy"]
                                          - LJ13_REFERENCE_MEAN_ENERGY}
    if failures and not quick:
        raise EnfError(f"{name}: the generated data failed their checks, nothing was written: "
                       + "; ".join(failures))
    for failure in failures:
        log(f"warning (quick mode, not enforced): {failure}")
    checks["passed"] = not failures
    checks["failures"] = failures

    with writing(out_dir, name, args, data_files + list(FIGURES)):
        for split in SPLITS:
            save_npz(out_dir / f"{split}.npz", positions=positions[split], energy=energies[split])
        _figures(name, out_dir, positions, energies, traces["train"], openmm_energies)
        meta_extra = {
            "seed": seed, "quick": quick, "energy": target.describe(), "dtype": "float32 positions, float64 energy",
            "centre_of_mass": "removed per sample",
            "order": "draw-major within a split: sample k is draw k // chains of chain k % chains",
            "sampler": {"kernel": "single-particle Metropolis sweeps (Gaussian moves, random order)",
                        "jump_prob": recipe.jump_prob, "jump_factor": recipe.jump_factor,
                        "settings": settings_dict(settings),
                        "seeds": "numpy SeedSequence(seed).spawn(3): training chains, valid+test chains, OpenMM"},
            "splits": diags, "checks": checks,
            "timing": {"wall_seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start},
        }
        finish_output(out_dir, name, args, data_files + list(FIGURES), meta_extra)
    log(f"{name}: wrote {out_dir} in {meta_extra['timing']['wall_seconds']:.1f} s")
    return read_json(out_dir / "meta.json")


def _figures(name: str, out_dir: Path, positions: dict[str, np.ndarray], energies: dict[str, np.ndarray],
             train: ChainResult, openmm_energies: np.ndarray | None) -> None:
    groups = dict(energies)
    if openmm_energies is not None:
        groups["OpenMM Langevin"] = openmm_energies
    figures.histograms(groups, "energy", f"{name}: energy of each split", out_dir / FIGURES[0])
    figures.histograms({s: pair_distances(p) for s, p in positions.items()}, "pair distance",
                       f"{name}: pair distances of each split", out_dir / FIGURES[1])
    figures.energy_trace(train.burn_in_trace, train.trace["energy"], int(train.diagnostics["burn_in_sweeps"]),
                         f"{name}: MCMC energy trace (training chains)", out_dir / FIGURES[2])
