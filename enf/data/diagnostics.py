"""MCMC and sample diagnostics: autocorrelation time, split R-hat, ESS, configurational temperature, two-sample tests.

Traces are arrays of shape (chains, draws). The autocorrelation time follows Stan's multi-chain estimator
(Geyer's initial monotone sequence); R-hat is the rank-normalised split R-hat of Vehtari et al. (2021).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from enf.errors import EnfError
from enf.geometry import pair_distances


def _as_trace(trace: np.ndarray, name: str = "trace") -> np.ndarray:
    arr = np.asarray(trace, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise EnfError(f"{name}: needs shape (chains, draws) with at least 4 draws, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise EnfError(f"{name}: holds NaN or infinite values")
    return arr


def _autocovariance(arr: np.ndarray) -> np.ndarray:
    """Biased autocovariance (divided by n) of every chain at lags 0..n-1, by FFT."""
    n = arr.shape[1]
    z = arr - arr.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(z, size, axis=1)
    return np.fft.irfft(f * np.conj(f), size, axis=1)[:, :n] / n


def autocorr_time(trace: np.ndarray) -> float:
    """Integrated autocorrelation time tau = 1 + 2 sum_t rho_t of a (chains, draws) trace (ESS = draws * chains / tau).

    Stan's estimator: rho_t from the chain-averaged autocovariance against the pooled variance, truncated at the
    first negative pair sum and made monotone (Geyer). A constant trace has tau = 1.
    """
    arr = _as_trace(trace)
    chains, n = arr.shape
    acov = _autocovariance(arr).mean(axis=0)
    mean_var = acov[0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if chains > 1:
        var_plus += arr.mean(axis=1).var(ddof=1)
    if var_plus <= 0:
        return 1.0
    rho = 1.0 - (mean_var - acov) / var_plus
    rho[0] = 1.0
    n_pairs = (n - 2) // 2
    pairs = rho[0:2 * n_pairs:2] + rho[1:2 * n_pairs:2]
    negative = np.flatnonzero(pairs < 0)
    pairs = pairs[:negative[0]] if negative.size else pairs
    pairs = np.minimum.accumulate(pairs)
    tau = -1.0 + 2.0 * pairs.sum()
    return float(max(tau, 1.0 / math.log10(max(chains * n, 11))))


def mcmc_effective_sample_size(trace: np.ndarray) -> float:
    """Effective number of independent draws in a (chains, draws) MCMC trace: chains * draws / tau.

    A count of draws, from their autocorrelation. Not the importance-sampling ESS of a flow's samples
    (`enf.evaluation.boltzmann.weights.reverse_ess` / `forward_ess`, fractions in [0, 1] from importance weights):
    the two measure different losses (correlated draws here, mismatched densities there), so both exist.
    """
    arr = _as_trace(trace)
    return float(arr.size / autocorr_time(arr))


def _rhat_classic(arr: np.ndarray) -> float:
    n = arr.shape[1]
    w = arr.var(axis=1, ddof=1).mean()
    b_over_n = arr.mean(axis=1).var(ddof=1)
    if w <= 0:
        return 1.0 if b_over_n <= 0 else math.inf
    return float(math.sqrt(((n - 1) / n * w + b_over_n) / w))


def _rank_normalise(arr: np.ndarray) -> np.ndarray:
    ranks = stats.rankdata(arr, method="average").reshape(arr.shape)
    return stats.norm.ppf((ranks - 0.375) / (arr.size + 0.25))


def split_rhat(trace: np.ndarray) -> float:
    """Rank-normalised split R-hat (max of bulk and tail) of a (chains, draws) trace; 1 means the chains agree."""
    arr = _as_trace(trace)
    half = arr.shape[1] // 2
    split = np.concatenate([arr[:, :half], arr[:, arr.shape[1] - half:]], axis=0)
    if half < 2:
        raise EnfError(f"split R-hat needs at least 4 draws per chain, got {arr.shape[1]}")
    bulk = _rhat_classic(_rank_normalise(split))
    tail = _rhat_classic(_rank_normalise(np.abs(split - np.median(split))))
    return max(bulk, tail)


def rhat_noise(chains: int, draws: int) -> float:
    """Standard deviation of split R-hat for independent draws (half-chains of draws // 2 from 2 * chains).

    R-hat^2 - 1 is about (F - 1) / n with F an F-ratio on 2 * chains - 1 degrees of freedom, so its spread is
    sqrt(2 / (2 chains - 1)) / (2 n); a simulation gives a slightly smaller value, so this errs on the safe side.
    """
    half = max(draws // 2, 1)
    return math.sqrt(2.0 / max(2 * chains - 1, 1)) / (2.0 * half)


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    """Mean of draws and its standard error, corrected by the autocorrelation time when given (chains, draws)."""
    arr = np.asarray(values, dtype=np.float64)
    flat = arr.reshape(-1)
    if flat.size < 2:
        raise EnfError(f"need at least 2 values for a standard error, got {flat.size}")
    tau = autocorr_time(arr) if arr.ndim == 2 and arr.shape[1] >= 4 else 1.0
    return float(flat.mean()), float(flat.std(ddof=1) * math.sqrt(tau / flat.size))


def configurational_temperature(grad_sq: np.ndarray, laplacian: np.ndarray) -> tuple[float, float]:
    """T_conf = <|grad E|^2> / <laplacian E> and its delta-method standard error.

    For samples of exp(-E / T) it equals T (integration by parts), independently of the normaliser, so it checks
    that samples follow their energy. Inputs are per-sample values, (n,) or (chains, draws).
    """
    g = np.asarray(grad_sq, dtype=np.float64)
    lap = np.asarray(laplacian, dtype=np.float64)
    if g.shape != lap.shape:
        raise EnfError(f"configurational temperature: shapes differ, {g.shape} vs {lap.shape}")
    mean_lap = lap.mean()
    if not mean_lap > 0:
        raise EnfError(f"configurational temperature: mean Laplacian is {mean_lap}, not positive")
    t_conf = g.mean() / mean_lap
    residual = (g - t_conf * lap) / mean_lap   # linearisation of the ratio estimator
    _, se = mean_and_se(residual)
    return float(t_conf), float(se)


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Two-sample Kolmogorov-Smirnov test of independent draws: statistic and p-value."""
    res = stats.ks_2samp(np.ravel(a), np.ravel(b))
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "n_a": int(np.size(a)),
            "n_b": int(np.size(b))}


def z_score(mean_a: float, se_a: float, mean_b: float, se_b: float) -> float:
    """Difference of two estimates in units of their combined standard error."""
    return float((mean_a - mean_b) / math.sqrt(se_a ** 2 + se_b ** 2))


def one_pair_per_sample(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One randomly chosen pair distance per configuration: independent draws of the pair-distance marginal."""
    d = pair_distances(x)
    return d[np.arange(d.shape[0]), rng.integers(0, d.shape[1], size=d.shape[0])]
