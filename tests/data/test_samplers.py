"""The Metropolis sampler recovers known moments; single-particle moves keep an exact running energy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from enf.data.diagnostics import configurational_temperature, mean_and_se
from enf.data.energies import make_energy
from enf.data.samplers import ParticleKernel, RandomWalkKernel, SamplerSettings, run_chains
from enf.errors import EnfError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_moments_and_adaptation() -> None:
    kernel = RandomWalkKernel(lambda x: 0.5 * x.pow(2).sum(-1))
    x0 = torch.randn(400, 3, generator=_gen(), dtype=torch.float64) * 3
    settings = SamplerSettings(burn_in=200, window=100, initial_step=0.05, trace_chains=400)
    res = run_chains(kernel, x0, 10, settings, _gen(1))
    samples = res.samples.reshape(-1, 3).numpy()
    assert abs(samples.mean(0)).max() < 4 / math.sqrt(len(samples))
    assert samples.var(0) == pytest.approx([1, 1, 1], abs=0.1)
    assert res.diagnostics["acceptance"] == pytest.approx(0.234, abs=0.06)   # the adapted step hits its target
    assert res.diagnostics["step_size"] > 0.5                                # adapted up from 0.05
    assert max(res.diagnostics["split_rhat_samples"].values()) < 1.1       # 10 draws one IAT apart per chain


def test_double_well_moments_against_quadrature() -> None:
    # 1D double well exp(-(x^4 - 4 x^2)): two modes at +-sqrt(2), barrier 4; moments by numerical integration.
    def energy(x: torch.Tensor) -> torch.Tensor:
        return (x.pow(4) - 4 * x.pow(2)).sum(-1)

    def density(x: float) -> float:
        return math.exp(-(x**4 - 4 * x**2))

    z = integrate.quad(density, -6, 6)[0]
    m2 = integrate.quad(lambda x: x**2 * density(x), -6, 6)[0] / z
    m4 = integrate.quad(lambda x: x**4 * density(x), -6, 6)[0] / z
    x0 = torch.randn(1000, 1, generator=_gen(2), dtype=torch.float64)
    settings = SamplerSettings(burn_in=200, window=200, initial_step=1.0, trace_chains=1000)
    res = run_chains(RandomWalkKernel(energy), x0, 8, settings, _gen(3))
    x = res.samples[..., 0].numpy().T                                  # (chains, draws)
    for moment, exact in ((x**2, m2), (x**4, m4)):
        mean, se = mean_and_se(moment)
        assert abs(mean - exact) < 4 * se, (mean, se, exact)
    positive, se_pos = mean_and_se((x > 0).astype(float))
    assert abs(positive - 0.5) < 4 * se_pos                             # both modes equally visited


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_particle_kernel_running_energy_is_exact(name: str) -> None:
    energy = make_energy(name)
    kernel = ParticleKernel(energy, check_every=0, jump_prob=0.3 if name == "dw4" else 0.0, jump_factor=4.0)
    x = torch.randn(64, *energy.event_shape, generator=_gen(4), dtype=torch.float64)
    x = x * (2.0 if name == "dw4" else 0.9)
    e = kernel.init(x)
    for _ in range(30):
        x, e, acc = kernel.sweep(x, e, 0.1, _gen(5))
    torch.testing.assert_close(e, energy.energy(x), rtol=1e-9, atol=1e-9)
    assert x.mean(1).abs().max() < 1e-12                               # states stay centred
    assert acc.shape == (64,) and 0 < float(acc.mean()) < 1


def test_dw4_samples_follow_their_energy() -> None:
    energy = make_energy("dw4")
    kernel = ParticleKernel(energy, jump_prob=0.5, jump_factor=6.0)
    x0 = torch.randn(200, 4, 2, generator=_gen(6), dtype=torch.float64) * 2
    settings = SamplerSettings(burn_in=200, window=200, initial_step=0.4, target_accept=0.2, window_iats=10,
                               rhat_target=1.05)
    res = run_chains(kernel, x0, 4, settings, _gen(7))
    x = res.samples.reshape(-1, 4, 2)
    _, grad, lap = energy.derivatives(x)
    t_conf, se = configurational_temperature(grad.pow(2).sum((1, 2)).numpy(), lap.numpy())
    assert abs(t_conf - 1) < 4 * se and se < 0.1


def test_refusals() -> None:
    kernel = RandomWalkKernel(lambda x: 0.5 * x.pow(2).sum(-1))
    with pytest.raises(EnfError, match="at least 2 chains"):
        run_chains(kernel, torch.zeros(1, 2, dtype=torch.float64), 5, SamplerSettings(), _gen())
    with pytest.raises(EnfError, match="at least 1"):
        run_chains(kernel, torch.zeros(4, 2, dtype=torch.float64), 0, SamplerSettings(), _gen())
    with pytest.raises(EnfError, match="non-finite"):
        run_chains(RandomWalkKernel(lambda x: torch.full((x.shape[0],), float("nan"), dtype=x.dtype)),
                   torch.zeros(4, 2, dtype=torch.float64), 5, SamplerSettings(), _gen())
    # Half the chains start in each of two wells that a barrier of 200 keeps apart: R-hat can never agree.
    walls = RandomWalkKernel(lambda x: 200 * (x[:, 0].pow(2) - 1).pow(2) + 0.5 * x[:, 1].pow(2))
    x0 = torch.tensor(np.repeat([[1.0, 0.0], [-1.0, 0.0]], 50, axis=0))
    with pytest.raises(EnfError, match="did not equilibrate"):
        run_chains(walls, x0, 5, SamplerSettings(burn_in=20, window=40, max_sweeps=200), _gen())
    with pytest.raises(EnfError, match="jump"):
        ParticleKernel(make_energy("dw4"), jump_prob=2.0)


def test_run_chains_is_its_three_phases() -> None:
    """`run_chains` = `burn_in`, `equilibrate`, `sample_chains` in turn on one generator (same seed, same draws)."""
    from enf.data.samplers import burn_in, equilibrate, sample_chains

    kernel = RandomWalkKernel(lambda x: 0.5 * x.pow(2).sum(-1))
    x0 = torch.randn(40, 2, generator=_gen(), dtype=torch.float64)
    settings = SamplerSettings(burn_in=30, window=20, initial_step=0.1, trace_chains=16, equilibrate=False)
    res = run_chains(kernel, x0, 5, settings, _gen(1))
    gen = _gen(1)
    means: list[float] = []
    x, e, step = burn_in(kernel, x0.clone(), kernel.init(x0), settings, kernel.target_accept, gen, means)
    x, e, used, equil = equilibrate(kernel, x, e, step, settings, gen, 16, None, means, lambda _m: None)
    draws = sample_chains(kernel, x, e, step, max(1, math.ceil(float(equil["iat"]))), 5, gen, 16, None)
    assert torch.equal(res.samples, draws.samples) and torch.equal(res.energies, draws.energies)
    assert list(res.burn_in_trace) == means and used == 50
    assert res.diagnostics["step_size"] == step and res.diagnostics["acceptance"] == draws.acceptance
