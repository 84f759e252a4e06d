"""MCMC diagnostics against processes with known answers: AR(1) chains, independent draws, Gaussians."""

from __future__ import annotations

import numpy as np
import pytest

from enf.data.diagnostics import (
    autocorr_time,
    configurational_temperature,
    ks_two_sample,
    mcmc_effective_sample_size,
    mean_and_se,
    one_pair_per_sample,
    rhat_noise,
    split_rhat,
    z_score,
)
from enf.errors import EnfError
from enf.geometry import pair_distances


def _ar1(phi: float, chains: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) chains with unit innovations: tau = (1 + phi) / (1 - phi)."""
    x = np.empty((chains, draws))
    noise = rng.normal(size=(chains, draws))
    x[:, 0] = noise[:, 0] / np.sqrt(1 - phi**2)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


def test_autocorr_time_of_ar1_and_iid() -> None:
    rng = np.random.default_rng(0)
    assert autocorr_time(_ar1(0.8, 100, 2000, rng)) == pytest.approx(9.0, rel=0.1)
    iid = rng.normal(size=(50, 400))
    assert autocorr_time(iid) == pytest.approx(1.0, abs=0.1)
    assert mcmc_effective_sample_size(iid) == pytest.approx(iid.size, rel=0.1)
    assert autocorr_time(np.ones((3, 10))) == 1.0


def test_split_rhat_detects_disagreeing_and_drifting_chains() -> None:
    rng = np.random.default_rng(1)
    iid = rng.normal(size=(200, 40))
    assert abs(split_rhat(iid) - 1) < 4 * rhat_noise(200, 40)
    shifted = iid + np.arange(200)[:, None] * 0.02          # chains centred at different values
    assert split_rhat(shifted) > 1.05
    drifting = iid + np.linspace(0, 2, 40)[None, :]         # every chain drifts: split halves disagree
    assert split_rhat(drifting) > 1.1


def test_rhat_noise_matches_simulation() -> None:
    rng = np.random.default_rng(2)
    sims = [split_rhat(rng.normal(size=(100, 20))) for _ in range(100)]
    assert np.std(sims) == pytest.approx(rhat_noise(100, 20), rel=0.5)


def test_mean_and_se_accounts_for_autocorrelation() -> None:
    rng = np.random.default_rng(3)
    x = _ar1(0.9, 40, 2000, rng)
    mean, se = mean_and_se(x)
    naive = x.std() / np.sqrt(x.size)
    assert se == pytest.approx(naive * np.sqrt(19.0), rel=0.2)   # tau = 19
    assert abs(mean) < 4 * se


@pytest.mark.parametrize("temperature,dim", [(1.0, 6), (2.0, 3)])
def test_configurational_temperature_of_a_gaussian(temperature: float, dim: int) -> None:
    # E = |x|^2 / 2 sampled at temperature T: |grad E|^2 = |x|^2, laplacian = dim, so T_conf = T.
    rng = np.random.default_rng(4)
    x = rng.normal(scale=np.sqrt(temperature), size=(20_000, dim))
    t_conf, se = configurational_temperature((x**2).sum(1), np.full(len(x), float(dim)))
    assert abs(t_conf - temperature) < 4 * se
    assert se == pytest.approx(temperature * np.sqrt(2 / dim / len(x)), rel=0.1)


def test_configurational_temperature_refuses_bad_input() -> None:
    with pytest.raises(EnfError, match="shapes differ"):
        configurational_temperature(np.ones(5), np.ones(4))
    with pytest.raises(EnfError, match="not positive"):
        configurational_temperature(np.ones(5), -np.ones(5))


def test_two_sample_tests_and_pair_distances() -> None:
    rng = np.random.default_rng(5)
    same = ks_two_sample(rng.normal(size=3000), rng.normal(size=2000))
    assert same["pvalue"] > 1e-3
    assert ks_two_sample(rng.normal(size=3000), rng.normal(0.3, size=2000))["pvalue"] < 1e-6
    assert z_score(1.0, 0.3, 0.0, 0.4) == pytest.approx(2.0)
    x = np.array([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]])
    assert pair_distances(x).tolist() == [[3.0, 4.0, 5.0]]
    assert one_pair_per_sample(np.repeat(x, 10, 0), rng).shape == (10,)


def test_trace_validation() -> None:
    with pytest.raises(EnfError, match="at least 4 draws"):
        autocorr_time(np.ones((2, 3)))
    with pytest.raises(EnfError, match="NaN"):
        split_rhat(np.full((2, 10), np.nan))
