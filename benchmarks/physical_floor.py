"""Physical floor of the test NLL on DW4 and LJ13: the entropy H = <E> + log Z of the target density.

What: for p(x) = exp(-E(x)) / Z on the zero-centre-of-mass subspace ((M - 1) n dimensions, temperature 1), the
expected test NLL of any model is at least the entropy H = E_p[-log p] = <E> + log Z (nats per configuration), so a
test NLL below H by more than its standard error is a bug. This script estimates log Z, <E> and H for DW4 and for
LJ13 in both energy conventions ("ordered": the paper's energy, Lennard-Jones over ordered pairs; "unique": bgflow's,
half of it), so that the floors quoted in the tables can be reproduced.

Measure: Z is the integral of exp(-E) over the subspace with the Lebesgue measure induced by R^(M n), the measure
of enf's base density (enf.models.flows.distributions.com_free_gaussian_log_prob: -|x|^2 / 2 - (M - 1) n / 2 log 2 pi).
With E = |x|^2 / 2 this gives log Z = (M - 1) n / 2 log 2 pi and H = the base density's entropy; the tests check it.

How:
- Annealed importance sampling (AIS) in float64, all chains at once, along E_b = b V + k_ref |x|^2 / 2 for b from 0
  to 1, V = E - k_ref |x|^2 / 2 (|x|^2 summed over the centred particles). At b = 0 this is a Gaussian on the
  subspace with Z_0 = (2 pi / k_ref)^((M - 1) n / 2). LJ13 has a harmonic term of strength 1: with k_ref = 1 the
  path is harmonic + b LJ, no Gaussian width to tune and the reference already keeps the cluster together. DW4 has
  none: k_ref = 1 / s^2 with s of the data's spread. Each level does single-particle Metropolis sweeps
  (enf.data.samplers.ParticleKernel) and adds -(b_k+1 - b_k) V(x) to the log-weights.
- The temperatures come from a pilot: sequential Monte Carlo with resampling on fewer chains, each step sized so
  that the spread of its log-weight increments is `delta`, gives the thermodynamic length L(b) = int sd_b(V) db and
  a step size for each b; the main run places its K temperatures evenly in L, with the pilot's step sizes. The
  main run adapts nothing, so its chains are independent and its weights unbiased for Z / Z_0.
- log Z = log Z_0 + log mean(w), its standard error by bootstrap over chains, ESS = (sum w)^2 / sum w^2.
- Then every chain does `target_sweeps` sweeps at the target (enf's kernel with the data sets' recipe: long
  jumps for DW4). A kernel that leaves the target invariant keeps (x, w) properly weighted, so
  <E> = sum_c w_c Ebar_c / sum_c w_c, Ebar_c the chain's mean energy over those sweeps, needs no equilibration;
  H = log Z + <E>, errors of all three by a joint bootstrap over chains (their correlation counts).
  Cross-check ("mcmc_*"): the plain MCMC mean over the second half of the sweeps (the first half, many IATs long,
  is burn-in), unweighted, its SE from the independent chains' means, with the energy's IAT and split R-hat.
- DW4, independently: exact quadrature. Pin particle 1 at the origin, use rotation invariance to put particle 2 on
  the x axis at distance rho, and integrate particles 3 and 4 on a grid, the r3-r4 pair factor as an FFT
  convolution: Z = 2 pi / M^(n/2) int rho exp(-u(rho)) F(rho) d rho (the M^(-n/2) converts pinned coordinates to the
  subspace measure), and <E> = 6 <u(d_12)> by symmetry. Converged to about 1e-10 nats in about a second.

Usage: python benchmarks/physical_floor.py [--systems dw4,lj13-ordered,lj13-unique] [--chains C] [--temperatures K]
                                           [--seed 0] [--quick] [--out-dir benchmarks/results]
Prints a table and writes physical_floor.csv and physical_floor.json to --out-dir. The defaults take about
6 minutes of one CPU thread (measured: 344 s CPU, 10 minutes wall on a machine busy with other jobs; run with
OMP_NUM_THREADS=1) and give standard errors of log Z of 0.006 (DW4), 0.02 (LJ13 ordered) and 0.01 (LJ13
unique) nats; --quick takes seconds (loose values, for the tests). --chains and --temperatures override every
system's default.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from enf.data.diagnostics import autocorr_time, split_rhat
from enf.data.energies import PairEnergy, make_energy
from enf.data.particles import RECIPES
from enf.data.samplers import ParticleKernel
from enf.errors import EnfError
from enf.geometry import remove_mean

LOG_2PI = math.log(2 * math.pi)
# System name -> (data set, LJ13 convention).
SYSTEMS = {"dw4": ("dw4", "ordered"), "lj13-ordered": ("lj13", "ordered"), "lj13-unique": ("lj13", "unique")}


@dataclass(frozen=True)
class AISSettings:
    """How one system is annealed."""

    k_ref: float                  # reference Gaussian exp(-k_ref |x|^2 / 2) on the subspace
    chains: int                   # main AIS run
    temperatures: int             # main AIS levels K (b_0 = 0 < ... < b_K = 1)
    sweeps: int = 1               # Metropolis sweeps per level
    target_sweeps: int = 2000     # sweeps at the target after the annealing (energies of every sweep kept)
    mcmc_accept: float | None = None   # their kernel: acceptance target (None: the kernel's),
    jump_prob: float = 0.0             # long-jump probability and length (DW4: crosses its pair-distance barrier)
    jump_factor: float = 1.0
    pilot_chains: int = 256
    pilot_delta: float = 0.5      # spread of the pilot's log-weight increments per level
    pilot_sweeps: int = 4
    bootstrap: int = 1000


# The target MCMC uses the kernels that generate the data sets (enf.data.particles.RECIPES).
_DW4, _LJ13 = RECIPES["dw4"], RECIPES["lj13"]
_MCMC_DW4 = {"mcmc_accept": _DW4.target_accept, "jump_prob": _DW4.jump_prob, "jump_factor": _DW4.jump_factor}
_MCMC_LJ13 = {"mcmc_accept": _LJ13.target_accept, "jump_prob": _LJ13.jump_prob, "jump_factor": _LJ13.jump_factor}
DEFAULTS = {
    "dw4": AISSettings(k_ref=0.25, chains=4000, temperatures=2000, target_sweeps=2000, **_MCMC_DW4),
    "lj13-ordered": AISSettings(k_ref=1.0, chains=2000, temperatures=8000, target_sweeps=6000, **_MCMC_LJ13),
    "lj13-unique": AISSettings(k_ref=1.0, chains=2000, temperatures=4000, target_sweeps=4000, **_MCMC_LJ13),
}
QUICK = {"chains": 1000, "temperatures": 400, "target_sweeps": 200, "pilot_chains": 128, "bootstrap": 200}


class AnnealedEnergy(PairEnergy):
    """E_b(x) = b sum_{i<j} u(d_ij) / T + k_b / 2 |x - mean|^2, k_b = k_ref + b (k / T - k_ref): E_0 is the
    reference Gaussian, E_1 the target's reduced energy E / T (u, k and T the target's)."""

    name = "annealed"

    def __init__(self, target: PairEnergy, k_ref: float, beta: float = 0.0) -> None:
        super().__init__(target.n_particles, target.n_dim)
        if not k_ref > 0:
            raise EnfError(f"the reference Gaussian needs a positive strength, got {k_ref}")
        self.target = target
        self.k_ref = float(k_ref)
        self.k_target = target.harmonic / target.temperature
        self.set_beta(beta)

    def set_beta(self, beta: float) -> None:
        """Move along the path to b = `beta`."""
        self.beta = float(beta)
        self._factor = self.beta / self.target.temperature
        self.harmonic = self.k_ref + self.beta * (self.k_target - self.k_ref)

    def pair(self, d: Tensor) -> Tensor:
        return self._factor * self.target.pair(d)

    def pair_sq(self, d2: Tensor) -> Tensor:
        return self._factor * self.target.pair_sq(d2)

    def pair_derivatives(self, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        u, du, d2u = self.target.pair_derivatives(d)
        return self._factor * u, self._factor * du, self._factor * d2u

    def potential(self, x: Tensor) -> Tensor:
        """V(x) = E_1(x) - E_0(x), so that E_b = E_0 + b V; shape (B,)."""
        i, j = self._pairs
        diff = x[:, i] - x[:, j]
        centred = x - x.mean(1, keepdim=True)
        pairs = self.target.pair_sq((diff * diff).sum(-1)).sum(-1) / self.target.temperature
        return pairs + 0.5 * (self.k_target - self.k_ref) * (centred * centred).sum((1, 2))

    def reference_log_z(self) -> float:
        """log of the integral of exp(-k_ref |x|^2 / 2) over the zero-mean subspace."""
        return 0.5 * self.dof * (LOG_2PI - math.log(self.k_ref))

    def sample_reference(self, n: int, gen: torch.Generator) -> Tensor:
        """n exact draws from the reference Gaussian on the subspace, float64."""
        x = torch.randn((n, self.n_particles, self.n_dim), generator=gen, dtype=torch.float64)
        return remove_mean(x) / math.sqrt(self.k_ref)


def _systematic_resample(log_w: Tensor, gen: torch.Generator) -> Tensor:
    """Indices of a systematic resampling of the chains by weights exp(log_w)."""
    w = torch.softmax(log_w, 0)
    n = len(w)
    u = (torch.rand((), generator=gen, dtype=w.dtype) + torch.arange(n, dtype=w.dtype)) / n
    return torch.searchsorted(torch.cumsum(w, 0), u).clamp(max=n - 1)


def target_kernel(target: PairEnergy, settings: AISSettings) -> ParticleKernel:
    """The Metropolis kernel of the sweeps at the target (may use long jumps)."""
    kernel = ParticleKernel(target, check_every=0, jump_prob=settings.jump_prob, jump_factor=settings.jump_factor)
    if settings.mcmc_accept is not None:
        kernel.target_accept = settings.mcmc_accept
    return kernel


def pilot(energy: AnnealedEnergy, settings: AISSettings, gen: torch.Generator,
          max_levels: int = 100_000) -> dict[str, np.ndarray]:
    """Sequential Monte Carlo with resampling from b = 0 to 1: the b grid, the thermodynamic length L(b), the
    adapted log step size at each level, and the step size of the target kernel."""
    x = energy.sample_reference(settings.pilot_chains, gen)
    energy.set_beta(0.0)
    kernel = ParticleKernel(energy, check_every=0)
    log_step = math.log(0.5 / math.sqrt(max(energy.k_ref, energy.k_target)))
    betas, lengths, steps = [0.0], [0.0], [log_step]
    beta = 0.0

    def sweeps(x: Tensor, count: int, log_step: float, kernel: ParticleKernel = kernel) -> tuple[Tensor, float]:
        e = kernel.init(x)
        for _ in range(count):
            x, e, a = kernel.sweep(x, e, math.exp(log_step), gen)
            log_step += 0.5 * (float(a.mean()) - kernel.target_accept)
        return x, log_step

    x, log_step = sweeps(x, settings.pilot_sweeps, log_step)
    steps[0] = log_step
    for _ in range(max_levels):
        v = energy.potential(x)
        spread = float(v.std())
        dbeta = 1.0 - beta if spread * (1.0 - beta) <= settings.pilot_delta else settings.pilot_delta / spread
        beta = min(1.0, beta + dbeta)
        energy.set_beta(beta)
        x = x[_systematic_resample(-dbeta * v, gen)]
        x, log_step = sweeps(x, settings.pilot_sweeps, log_step)
        betas.append(beta)
        lengths.append(lengths[-1] + dbeta * spread)
        steps.append(log_step)
        if beta >= 1.0:
            break
    else:
        raise EnfError(f"the pilot did not reach b = 1 in {max_levels} levels")
    x, steps[-1] = sweeps(x, 20, log_step)      # settle the last level's step size
    _, target_step = sweeps(x, 50, steps[-1], target_kernel(energy.target, settings))
    return {"beta": np.asarray(betas), "length": np.asarray(lengths), "log_step": np.asarray(steps),
            "target_step": np.asarray(math.exp(target_step))}


def schedule(plan: dict[str, np.ndarray], levels: int) -> tuple[np.ndarray, np.ndarray]:
    """`levels` + 1 temperatures b_0 = 0 < ... < b_K = 1 evenly spaced in thermodynamic length, and the step size
    of each level (the pilot's, at the same length)."""
    grid = np.linspace(0.0, plan["length"][-1], levels + 1)
    betas = np.interp(grid, plan["length"], plan["beta"])
    betas[0], betas[-1] = 0.0, 1.0
    steps = np.exp(np.interp(grid, plan["length"], plan["log_step"]))
    return betas, steps


def ais(energy: AnnealedEnergy, betas: np.ndarray, steps: np.ndarray, target_step: float, settings: AISSettings,
        gen: torch.Generator) -> dict[str, object]:
    """Anneal `settings.chains` independent chains along `betas`, then sweep them at the target: log-weights
    (estimates of log(Z_1 / Z_0)), the target energy of every chain after every target sweep (C, sweeps), and the
    mean acceptances."""
    x = energy.sample_reference(settings.chains, gen)
    energy.set_beta(0.0)
    kernel = ParticleKernel(energy, check_every=0)
    e = kernel.init(x)
    log_w = torch.zeros(settings.chains, dtype=torch.float64)
    acc_sum, moves = 0.0, 0
    for k in range(1, len(betas)):
        step_in_b = (betas[k] - betas[k - 1]) * energy.potential(x)
        log_w -= step_in_b
        energy.set_beta(float(betas[k]))
        e = e + step_in_b                                # E_b_k(x) = E_b_k-1(x) + (b_k - b_k-1) V(x)
        for _ in range(settings.sweeps):
            x, e, a = kernel.sweep(x, e, float(steps[k]), gen)
            acc_sum += float(a.mean())
            moves += 1
    # A kernel that leaves the target invariant keeps (x, w) properly weighted: every later sweep is weighted too.
    final = target_kernel(energy.target, settings)
    e = final.init(x)
    trace = torch.empty((settings.target_sweeps, settings.chains), dtype=torch.float64)
    final_acc = 0.0
    for t in range(settings.target_sweeps):
        x, e, a = final.sweep(x, e, target_step, gen)
        trace[t] = e
        final_acc += float(a.mean())
    return {"log_w": log_w.numpy(), "trace": (trace.T * energy.target.temperature).numpy(),
            "acceptance": acc_sum / max(moves, 1), "target_acceptance": final_acc / max(settings.target_sweeps, 1)}


def _log_mean_exp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).mean(axis=axis, keepdims=True))).squeeze(axis)


def estimates(log_w: np.ndarray, energy: np.ndarray, log_z0: float, reps: int,
              rng: np.random.Generator) -> dict[str, float]:
    """log Z, <E>, H and their bootstrap standard errors over chains, with the ESS of the weights."""

    def stats(lw: np.ndarray, en: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_z = log_z0 + _log_mean_exp(lw)
        w = np.exp(lw - lw.max(axis=-1, keepdims=True))
        mean_e = (w * en).sum(-1) / w.sum(-1)
        return log_z, mean_e

    log_z, mean_e = stats(log_w, energy)
    idx = rng.integers(0, len(log_w), size=(reps, len(log_w)))
    bz, be = stats(log_w[idx], energy[idx])
    w = np.exp(log_w - log_w.max())
    return {"log_z": float(log_z), "log_z_se": float(bz.std(ddof=1)), "mean_energy": float(mean_e),
            "mean_energy_se": float(be.std(ddof=1)), "entropy": float(log_z + mean_e),
            "entropy_se": float((bz + be).std(ddof=1)), "ess": float(w.sum() ** 2 / (w * w).sum()),
            "log_w_sd": float(log_w.std())}


def mcmc_estimate(trace: np.ndarray) -> dict[str, float]:
    """Plain MCMC <E> over the second half of the target sweeps, unweighted (the first half is burn-in), with the
    SE from the independent chains' means, the energy's IAT in sweeps and its split R-hat (draws one IAT apart)."""
    late = trace[:, trace.shape[1] // 2:]
    means = late.mean(1)
    out = {"mcmc_mean_energy": float(means.mean()),
           "mcmc_mean_energy_se": float(means.std(ddof=1) / math.sqrt(len(means))),
           "iat_sweeps": math.nan, "rhat": math.nan}
    if late.shape[1] >= 8:
        out["iat_sweeps"] = autocorr_time(late[:1024])
        thinned = late[:1024, ::max(1, math.ceil(out["iat_sweeps"]))]
        out["rhat"] = split_rhat(thinned) if thinned.shape[1] >= 4 else math.nan
    return out


def anneal(target: PairEnergy, settings: AISSettings, seed: int) -> dict[str, object]:
    """Pilot, schedule, AIS run and target sweeps for one target: log Z, <E>, H with errors and diagnostics.

    log Z from the AIS weights; <E> the weighted mean of each chain's mean energy over all target sweeps (properly
    weighted: no equilibration assumed); errors of all three by a joint bootstrap. Cross-check ("mcmc_*"): the
    unweighted mean over the second half of the sweeps, H with the two SEs in quadrature.
    """
    if target.temperature != 1.0:
        raise EnfError(f"the floor is defined at temperature 1, got {target.temperature}")
    if settings.target_sweeps < 2:
        raise EnfError(f"need at least 2 sweeps at the target, got {settings.target_sweeps}")
    pilot_seed, ais_seed, boot_seed = np.random.SeedSequence(seed).generate_state(3)
    start, cpu = time.perf_counter(), time.process_time()
    energy = AnnealedEnergy(target, settings.k_ref)
    plan = pilot(energy, settings, torch.Generator().manual_seed(int(pilot_seed)))
    pilot_seconds = time.perf_counter() - start
    betas, steps = schedule(plan, settings.temperatures)
    run = ais(energy, betas, steps, float(plan["target_step"]), settings,
              torch.Generator().manual_seed(int(ais_seed)))
    trace = run["trace"]
    out = estimates(run["log_w"], trace.mean(1), energy.reference_log_z(), settings.bootstrap,
                    np.random.default_rng(boot_seed))
    mcmc = mcmc_estimate(trace)
    return {**out, **mcmc, "mcmc_entropy": out["log_z"] + mcmc["mcmc_mean_energy"],
            "mcmc_entropy_se": math.hypot(out["log_z_se"], mcmc["mcmc_mean_energy_se"]),
            "chains": settings.chains, "temperatures": settings.temperatures, "target_sweeps": settings.target_sweeps,
            "pilot_levels": len(plan["beta"]) - 1, "thermodynamic_length": float(plan["length"][-1]),
            "acceptance": run["acceptance"], "target_step": float(plan["target_step"]),
            "target_acceptance": run["target_acceptance"], "pilot_seconds": pilot_seconds,
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}


def quadrature_4x2(target: PairEnergy, spacing: float = 0.15, extent: float = 8.0,
                   rho_spacing: float = 0.05) -> dict[str, float]:
    """Exact log Z, <E> and H of a pair energy of 4 particles in 2D (no harmonic term) by quadrature.

    Particle 1 sits at the origin, particle 2 at (rho, 0) (rotation invariance: d x_2 = 2 pi rho d rho), particles
    3 and 4 on a square grid of half-width `extent`; their pair factor exp(-u(|x_3 - x_4|)) is a convolution,
    done by FFT. Pinning particle 1 instead of the centre of mass changes the measure by M^(n/2) = 4. `extent`
    must cover every distance with non-negligible exp(-u); the trapezoid rule converges exponentially here.
    """
    if target.event_shape != (4, 2) or target.harmonic:
        raise EnfError(f"quadrature needs 4 particles in 2D without a harmonic term, got {target.event_shape}, "
                       f"harmonic {target.harmonic}")

    def u(d: Tensor) -> Tensor:
        return target.pair(d) / target.temperature

    axis = torch.arange(-extent, extent + spacing / 2, spacing, dtype=torch.float64)
    n = len(axis)
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    lags = torch.arange(-(n - 1), n, dtype=torch.float64) * spacing
    kx, ky = torch.meshgrid(lags, lags, indexing="ij")
    size = (3 * n, 3 * n)                                  # > 3n - 2: a linear, not circular, convolution
    kernel_ft = torch.fft.rfft2(torch.exp(-u(torch.sqrt(kx * kx + ky * ky + 1e-300))), s=size)
    to_origin = torch.exp(-u(torch.sqrt(gx * gx + gy * gy + 1e-300)))
    rhos = torch.arange(0.0, 2 * extent, rho_spacing, dtype=torch.float64)
    inner = []
    for rho in rhos.tolist():
        g = to_origin * torch.exp(-u(torch.sqrt((gx - rho) ** 2 + gy * gy + 1e-300)))
        conv = torch.fft.irfft2(torch.fft.rfft2(g, s=size) * kernel_ft, s=size)[n - 1:2 * n - 1, n - 1:2 * n - 1]
        inner.append(float((g * conv).sum()) * spacing ** 4)
    inner_t = torch.tensor(inner, dtype=torch.float64)
    u12 = u(rhos)
    boltzmann = torch.exp(-u12)
    # Trapezoid rule in rho from 0, where G(rho) = 2 pi rho exp(-u) F vanishes; the Euler-Maclaurin term
    # h^2 / 12 G'(0) = h^2 / 12 2 pi exp(-u(0)) F(0) removes the rule's O(h^2) error (an O(h^4) one is left).
    density = 2 * math.pi * rhos * boltzmann * inner_t
    edge = 2 * math.pi * float(boltzmann[0] * inner_t[0]) * rho_spacing ** 2 / 12
    edge_u = edge * float(u12[0]) if edge > 0 else 0.0
    z = float(density.sum()) * rho_spacing + edge
    log_z = math.log(z) - 0.5 * target.n_dim * math.log(target.n_particles)
    pairs = target.n_particles * (target.n_particles - 1) // 2
    mean_e = pairs * (float((density * u12).sum()) * rho_spacing + edge_u) / z * target.temperature
    return {"log_z": log_z, "mean_energy": mean_e, "entropy": log_z + mean_e}


def gaussian_floor(dof: int, k: float = 1.0) -> dict[str, float]:
    """Closed form for E = k |x|^2 / 2 on a `dof`-dimensional subspace: log Z, <E> and H."""
    log_z = 0.5 * dof * (LOG_2PI - math.log(k))
    return {"log_z": log_z, "mean_energy": 0.5 * dof, "entropy": log_z + 0.5 * dof}


def settings_for(system: str, quick: bool, chains: int | None, temperatures: int | None) -> AISSettings:
    """The system's default AIS settings, shrunk by --quick, overridden by --chains / --temperatures."""
    s = DEFAULTS[system]
    if quick:
        s = replace(s, **QUICK)
    if chains:
        s = replace(s, chains=chains)
    if temperatures:
        s = replace(s, temperatures=temperatures)
    return s


def _json_safe(value: object) -> object:
    """NaN and infinities as null, so that the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {list(SYSTEMS)}")
    parser.add_argument("--chains", type=int, default=None, help="AIS chains (default: per system)")
    parser.add_argument("--temperatures", type=int, default=None, help="AIS levels K (default: per system)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few seconds per system, loose values")
    parser.add_argument("--out-dir", default="benchmarks/results")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {list(SYSTEMS)}")
    torch.set_num_threads(1)
    start, cpu = time.perf_counter(), time.process_time()
    rows: list[dict[str, object]] = []
    for i, system in enumerate(systems):
        name, convention = SYSTEMS[system]
        target = make_energy(name, convention)
        settings = settings_for(system, args.quick, args.chains, args.temperatures)
        if name == "dw4":
            t0, c0 = time.perf_counter(), time.process_time()
            exact = quadrature_4x2(target)
            rows.append({"system": system, "method": "quadrature", **exact,
                         "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0})
            print(rows[-1], flush=True)
        result = anneal(target, settings, args.seed + i)
        rows.append({"system": system, "method": "AIS", **result, "k_ref": settings.k_ref,
                     "sweeps_per_level": settings.sweeps})
        print(rows[-1], flush=True)
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"\n{'system':14} {'method':11} {'log Z':>8} {'SE':>6} {'<E>':>8} {'SE':>6} {'H':>7} {'SE':>6} "
          f"{'H MCMC':>8} {'SE':>6} {'ESS':>6} {'IAT':>5} {'seconds':>8} {'CPU s':>7}")
    for r in rows:
        def fmt(key: str, width: int, digits: int, row: dict[str, object] = r) -> str:
            value = row.get(key)
            return f"{value:{width}.{digits}f}" if isinstance(value, float) else f"{'-':>{width}}"
        print(f"{r['system']:14} {r['method']:11} {fmt('log_z', 8, 3)} {fmt('log_z_se', 6, 3)} "
              f"{fmt('mean_energy', 8, 3)} {fmt('mean_energy_se', 6, 3)} {fmt('entropy', 7, 3)} "
              f"{fmt('entropy_se', 6, 3)} {fmt('mcmc_entropy', 8, 3)} {fmt('mcmc_entropy_se', 6, 3)} "
              f"{fmt('ess', 6, 0)} {fmt('iat_sweeps', 5, 0)} {fmt('seconds', 8, 1)} {fmt('cpu_seconds', 7, 1)}")
    print(f"total {total:.1f} s wall, {total_cpu:.1f} s CPU on {torch.get_num_threads()} thread(s)")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "physical_floor.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    meta = {"seed": args.seed, "quick": args.quick, "total_seconds": total, "total_cpu_seconds": total_cpu,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "settings": {s: asdict(settings_for(s, args.quick, args.chains, args.temperatures)) for s in systems},
            "measure": "Lebesgue measure on the zero-centre-of-mass subspace induced by R^(M n), as enf's base "
                       "density; temperature 1; nats per configuration", "rows": rows}
    (out / "physical_floor.json").write_text(json.dumps(_json_safe(meta), indent=2, allow_nan=False) + "\n")
    print(f"wrote {out / 'physical_floor.csv'} and {out / 'physical_floor.json'}")
    return rows


if __name__ == "__main__":
    main()
