"""Vectorised Metropolis sampling with many parallel chains: adaptive burn-in, R-hat-checked equilibration, thinning.

A kernel does one sweep of every chain at a given step size. `run_chains` runs three phases, a function each:
1. `burn_in`: step-size adaptation (Robbins-Monro on log step toward a target acceptance; adaptation stops here),
2. `equilibrate`: windows at the frozen step until the split R-hat of every observable, over draws two integrated
   autocorrelation times apart, is below `rhat_target` (or `max_sweeps` is spent: an error),
3. `sample_chains`: `n_per_chain` draws per chain, `thin` sweeps apart, thin = ceil(measured IAT) unless given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from enf.data.diagnostics import autocorr_time, mcmc_effective_sample_size, rhat_noise, split_rhat
from enf.data.energies import PairEnergy
from enf.errors import EnfError

Observables = Callable[[Tensor], dict[str, Tensor]]


class Kernel(Protocol):
    """One Metropolis sweep of all chains at once."""

    target_accept: float

    def init(self, x: Tensor) -> Tensor:
        """Reduced energies (E / T) of the starting states, (C,)."""

    def sweep(self, x: Tensor, e: Tensor, step: float, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """One sweep: new states, their reduced energies, and each chain's acceptance fraction in the sweep."""


class RandomWalkKernel:
    """Gaussian random-walk Metropolis on the whole state (any event shape).

    With `centre` the proposal noise has its mean over axis 1 removed, so particle states stay on the
    zero-centre-of-mass subspace (the right move for translation-invariant energies).
    """

    target_accept = 0.234

    def __init__(self, reduced_energy: Callable[[Tensor], Tensor], centre: bool = False) -> None:
        self.reduced_energy = reduced_energy
        self.centre = centre

    def init(self, x: Tensor) -> Tensor:
        return self.reduced_energy(x)

    def sweep(self, x: Tensor, e: Tensor, step: float, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype) * step
        if self.centre:
            noise = noise - noise.mean(1, keepdim=True)
        y = x + noise
        ey = self.reduced_energy(y)
        log_u = torch.rand(e.shape, generator=gen, dtype=e.dtype).log()
        accept = log_u < e - ey                       # NaN energies are never accepted
        shape = (-1,) + (1,) * (x.dim() - 1)
        return torch.where(accept.view(shape), y, x), torch.where(accept, ey, e), accept.to(x.dtype)


class ParticleKernel:
    """Single-particle Metropolis moves for a pair energy: one sweep moves every particle once, in random order.

    Each move changes only the moved particle's N - 1 pair terms (and the harmonic term), so a sweep costs about
    two full energy evaluations but mixes far better than whole-configuration moves. With `jump_prob` > 0 a
    move uses `jump_factor` times the step instead (a symmetric Gaussian mixture proposal, so plain Metropolis
    still applies): long jumps carry particles across barriers, as DW4's two pair-distance modes need. States
    are re-centred after each sweep (a translation changes nothing); the running energy is checked against a
    full evaluation every `check_every` sweeps.
    """

    target_accept = 0.4

    def __init__(self, energy: PairEnergy, check_every: int = 100, jump_prob: float = 0.0,
                 jump_factor: float = 1.0) -> None:
        if not 0 <= jump_prob <= 1 or jump_factor <= 0:
            raise EnfError(f"jump probability must be in [0, 1] and jump factor positive, got {jump_prob}, "
                           f"{jump_factor}")
        self.energy = energy
        self.jump_prob = jump_prob
        self.jump_factor = jump_factor
        self.check_every = check_every
        n = energy.n_particles
        self._others = [torch.tensor([j for j in range(n) if j != p]) for p in range(n)]
        self._sweeps = 0

    def init(self, x: Tensor) -> Tensor:
        return self.energy.energy(x) / self.energy.temperature

    def sweep(self, x: Tensor, e: Tensor, step: float, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        en = self.energy
        n, dim, temp, k = en.n_particles, en.n_dim, en.temperature, en.harmonic
        chains = x.shape[0]
        # Work in the layout (dim, particle, chain): every slice below is contiguous and sums run over axis 0.
        xt = x.permute(2, 1, 0).contiguous()
        noise = torch.randn((n, dim, chains), generator=gen, dtype=x.dtype) * step
        if self.jump_prob:
            jump = torch.rand((n, 1, chains), generator=gen, dtype=x.dtype) < self.jump_prob
            noise = torch.where(jump, noise * self.jump_factor, noise)
        log_u = torch.rand((n, chains), generator=gen, dtype=x.dtype).log()
        order = torch.randperm(n, generator=gen).tolist()
        mean = xt.mean(1)
        accepted = x.new_zeros(chains)
        e_start = e
        for p in order:
            xp, delta = xt[:, p], noise[p]
            new = xp + delta
            xo = xt.index_select(1, self._others[p])
            old_diff = xo - xp.unsqueeze(1)
            new_diff = xo - new.unsqueeze(1)
            de = (en.pair_sq((new_diff * new_diff).sum(0)) - en.pair_sq((old_diff * old_diff).sum(0))).sum(0)
            if k:
                de = de + 0.5 * k * (2 * ((xp - mean) * delta).sum(0) + (delta * delta).sum(0) * (1 - 1 / n))
            de = de / temp
            accept = log_u[p] < -de
            xt[:, p] = torch.where(accept, new, xp)
            mean = mean + torch.where(accept, delta / n, 0.0)
            e = torch.where(accept, e + de, e)
            accepted += accept.to(x.dtype)
        x = xt.permute(2, 1, 0)
        x = (x - x.mean(1, keepdim=True)).contiguous()
        self._sweeps += 1
        if bool((e_start.abs() > 1e6).any()):
            e = self.init(x)  # running sums of huge terms lose precision: start over from a full evaluation
        elif self.check_every and self._sweeps % self.check_every == 0:
            e = self._resync(x, e)
        return x, e, accepted / n

    def _resync(self, x: Tensor, e: Tensor) -> Tensor:
        full = self.init(x)
        drift = (full - e).abs() / (1 + full.abs())
        if not bool((drift < 1e-8).all()):
            raise RuntimeError(f"incremental energy drifted from the full energy by {float(drift.max()):.3g} "
                               "(relative): the single-particle update is wrong")
        return full


@dataclass
class SamplerSettings:
    """Settings of `run_chains`; all counts are in sweeps."""

    burn_in: int = 500            # adaptation sweeps (the step size is frozen afterwards)
    window: int = 200             # sweeps of the first equilibration window (later ones: >= window_iats IAT)
    window_iats: float = 20.0     # so that each window gives >= 10 draws 2 IAT apart per chain
    max_sweeps: int = 20_000      # burn-in plus equilibration limit before giving up
    rhat_target: float = 1.01
    initial_step: float = 0.1
    target_accept: float | None = None   # None: the kernel's default
    adapt_every: int = 10
    thin: int | None = None       # None: ceil(IAT of the last equilibration window)
    trace_chains: int = 1024      # chains whose every-sweep observables give the IAT, R-hat checks and trace
    equilibrate: bool = True      # False (smoke tests only): one window measures IAT and R-hat, nothing waits


@dataclass
class ChainResult:
    """Samples (n_per_chain, chains, ...) in draw-major order, their observables and the run's diagnostics."""

    samples: Tensor
    energies: Tensor              # reduced energies of the samples, (n_per_chain, chains)
    observables: dict[str, np.ndarray]   # per sample, (n_per_chain, chains)
    trace: dict[str, np.ndarray]  # every sweep of the sampling phase, (min(trace_chains, chains), sweeps)
    burn_in_trace: np.ndarray     # mean reduced energy over chains at every burn-in / equilibration sweep
    diagnostics: dict[str, object] = field(default_factory=dict)


def _observe(x: Tensor, e: Tensor, observables: Observables | None) -> dict[str, Tensor]:
    out = {"energy": e}
    if observables is not None:
        out.update(observables(x))
    return out


def burn_in(kernel: Kernel, x: Tensor, e: Tensor, settings: SamplerSettings, target: float,
            gen: torch.Generator, energy_means: list[float]) -> tuple[Tensor, Tensor, float]:
    """Phase 1: `settings.burn_in` sweeps adapting the step size toward acceptance `target` (Robbins-Monro on the
    log step); returns the states, their reduced energies and the frozen step. Appends each sweep's mean energy."""
    log_step = math.log(settings.initial_step)
    window_acc = x.new_zeros(())
    for s in range(settings.burn_in):
        x, e, acc = kernel.sweep(x, e, math.exp(log_step), gen)
        window_acc += acc.mean()
        energy_means.append(float(e.mean()))
        if (s + 1) % settings.adapt_every == 0:
            rate = float(window_acc) / settings.adapt_every
            gain = 1.0 / math.sqrt(1 + (s + 1) / settings.adapt_every / 10)
            log_step += 2.0 * gain * (rate - target)
            window_acc.zero_()
    return x, e, math.exp(log_step)


def equilibrate(kernel: Kernel, x: Tensor, e: Tensor, step: float, settings: SamplerSettings, gen: torch.Generator,
                n_trace: int, observables: Observables | None, energy_means: list[float],
                say: Callable[[str], None]) -> tuple[Tensor, Tensor, int, dict[str, object]]:
    """Phase 2: windows at the frozen step until the thinned split R-hat of every observable is below its limit
    (one window when `settings.equilibrate` is off); returns the states, energies, sweeps spent (with the burn-in)
    and the last window's diagnostics. Raises when `settings.max_sweeps` is spent first."""
    used = settings.burn_in
    window = settings.window
    while True:
        rec: dict[str, list[Tensor]] = {}
        acc_sum = 0.0
        for _ in range(window):
            x, e, acc = kernel.sweep(x, e, step, gen)
            acc_sum += float(acc.mean())
            energy_means.append(float(e.mean()))
            for k, v in _observe(x[:n_trace], e[:n_trace], observables).items():
                rec.setdefault(k, []).append(v.detach().to(torch.float64))
        used += window
        traces = {k: torch.stack(v, 1).numpy() for k, v in rec.items()}
        tau = max(autocorr_time(t) for t in traces.values())
        # Draws 2 IAT apart are close to independent; 1 IAT apart they still inflate R-hat by about 0.3 / draws.
        gap = 2 * max(1, math.ceil(tau))
        draws = traces["energy"][:, ::gap].shape[1]
        rhats = {k: split_rhat(t[:, ::gap]) if draws >= 4 else None for k, t in traces.items()}   # None: too short
        # Below 3 standard deviations of its sampling noise R-hat cannot tell chains apart: never ask for less.
        limit = max(settings.rhat_target, 1 + 3 * rhat_noise(n_trace, draws))
        equil: dict[str, object] = {"window": window, "iat": tau, "rhat_thinned": rhats, "rhat_limit": limit,
                                    "draws_per_chain": draws, "acceptance": acc_sum / window}
        say(f"equilibration window of {window} sweeps: IAT {tau:.3g}, R-hat "
            + ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in rhats.items())
            + f" (limit {limit:.4f})")
        if not settings.equilibrate:
            return x, e, used, equil
        if window >= settings.window_iats * tau and all(r is not None and r < limit for r in rhats.values()):
            return x, e, used, equil
        if used >= settings.max_sweeps:
            raise EnfError(f"chains did not equilibrate within {settings.max_sweeps} sweeps (last window: IAT "
                           f"{tau:.3g}, thinned split R-hat {rhats}, target {settings.rhat_target}); increase "
                           "the burn-in or the sweep limit")
        window = max(window, math.ceil(1.25 * settings.window_iats * tau))   # margin: IAT estimates grow


@dataclass
class Draws:
    """What the sampling phase keeps: samples and reduced energies (draws, chains, ...), their observables, the
    every-sweep trace of the first chains and the mean acceptance."""

    samples: Tensor
    energies: Tensor
    observables: dict[str, np.ndarray]
    trace: dict[str, np.ndarray]
    acceptance: float


def sample_chains(kernel: Kernel, x: Tensor, e: Tensor, step: float, thin: int, n_per_chain: int,
                  gen: torch.Generator, n_trace: int, observables: Observables | None) -> Draws:
    """Phase 3: `n_per_chain` draws per chain, `thin` sweeps apart, tracing the first `n_trace` chains every sweep."""
    samples, energies = [], []
    kept_obs: dict[str, list[Tensor]] = {}
    trace: dict[str, list[Tensor]] = {}
    acc_sum = 0.0
    for _ in range(n_per_chain):
        for _ in range(thin):
            x, e, acc = kernel.sweep(x, e, step, gen)
            acc_sum += float(acc.mean())
            for k, v in _observe(x[:n_trace], e[:n_trace], observables).items():
                trace.setdefault(k, []).append(v.detach().to(torch.float64))
        samples.append(x.clone())
        energies.append(e.clone())
        for k, v in _observe(x, e, observables).items():
            kept_obs.setdefault(k, []).append(v.detach().to(torch.float64))
    return Draws(torch.stack(samples), torch.stack(energies),
                 {k: torch.stack(v, 0).numpy() for k, v in kept_obs.items()},   # (draws, chains)
                 {k: torch.stack(v, 1).numpy() for k, v in trace.items()}, acc_sum / (n_per_chain * thin))


def run_chains(kernel: Kernel, x0: Tensor, n_per_chain: int, settings: SamplerSettings,
               gen: torch.Generator, observables: Observables | None = None,
               log: Callable[[str], None] | None = None) -> ChainResult:
    """Run len(x0) chains through `burn_in`, `equilibrate` and `sample_chains`; see the module docstring."""
    if n_per_chain < 1:
        raise EnfError(f"samples per chain must be at least 1, got {n_per_chain}")
    chains = x0.shape[0]
    if chains < 2:
        raise EnfError(f"need at least 2 chains for R-hat, got {chains}")
    say = log or (lambda _msg: None)
    start = time.perf_counter()
    x = x0.clone()
    e = kernel.init(x)
    if not bool(torch.isfinite(e).all()):
        raise EnfError("some starting states have a non-finite energy")
    target = settings.target_accept if settings.target_accept is not None else kernel.target_accept
    energy_means: list[float] = []
    x, e, step = burn_in(kernel, x, e, settings, target, gen, energy_means)
    say(f"burn-in: {settings.burn_in} sweeps, step size {step:.4g}")
    n_trace = min(settings.trace_chains, chains)
    x, e, used, equil = equilibrate(kernel, x, e, step, settings, gen, n_trace, observables, energy_means, say)
    thin = settings.thin or max(1, math.ceil(float(equil["iat"])))
    say(f"{'equilibrated' if settings.equilibrate else 'quick mode, not checked for equilibrium,'} after {used} "
        f"sweeps; thinning by {thin}")
    draws = sample_chains(kernel, x, e, step, thin, n_per_chain, gen, n_trace, observables)
    sweeps = n_per_chain * thin
    diag = {
        "chains": chains, "samples_per_chain": n_per_chain, "step_size": step, "target_acceptance": target,
        "burn_in_sweeps": settings.burn_in, "equilibration_sweeps": used - settings.burn_in,
        "sampling_sweeps": sweeps, "thin": thin, "acceptance": draws.acceptance,
        "equilibration": equil,
        "iat_sweeps": {k: autocorr_time(t) for k, t in draws.trace.items()} if sweeps >= 4 else {},
        # R-hat from fewer than 8 draws per chain (4 per half) is mostly noise: not computed.
        "split_rhat_samples": {k: split_rhat(v.T) for k, v in draws.observables.items()} if n_per_chain >= 8 else {},
        "ess_samples": {k: mcmc_effective_sample_size(v.T) for k, v in draws.observables.items()}
        if n_per_chain >= 4 else {},
        "seconds": time.perf_counter() - start,
    }
    return ChainResult(draws.samples, draws.energies, draws.observables, draws.trace, np.asarray(energy_means),
                       diag)


def settings_dict(settings: SamplerSettings) -> dict[str, object]:
    """The settings as a JSON-able dict (for meta.json)."""
    return asdict(settings)
