"""Importance weights of a flow against a known energy: effective sample sizes and log Z estimates.

For model samples x ~ q the log weights are log w = -E(x) / T - log q(x); the normalised reverse effective sample
size is (sum w)^2 / (n sum w^2) in [0, 1] (1 when q is the target). For test data x ~ p the forward ESS is
n^2 / (sum w * sum 1/w), the same quantity estimated from the target's side (Midgley et al. 2023): it is not
fooled by a model that misses modes. These are fractions from importance weights, not the autocorrelation ESS of
MCMC draws (`enf.data.diagnostics.mcmc_effective_sample_size`), which counts correlated draws.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from enf.errors import EnfError


def clean_log_weights(log_w: Tensor) -> Tensor:
    """float64 log weights with NaN mapped to -inf (weight zero)."""
    log_w = log_w.detach().double().flatten()
    return torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)


def reverse_ess(log_w: Tensor) -> float:
    """Normalised ESS (sum w)^2 / (n sum w^2) in [0, 1] of importance weights given as logs (-inf: weight 0)."""
    log_w = clean_log_weights(log_w)
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
    log_w = clean_log_weights(log_w)
    n = log_w.numel()
    if n == 0:
        raise EnfError("forward_ess: no weights")
    if not torch.isfinite(log_w).all():
        return 0.0  # a target sample the model cannot produce (or produces infinitely often)
    value = 2 * math.log(n) - torch.logsumexp(log_w, 0) - torch.logsumexp(-log_w, 0)
    return float(torch.exp(value).clamp(max=1.0))


def log_partition_reverse(log_w: Tensor) -> float:
    """log Z estimated by importance sampling from the model: log mean w (a stochastic lower bound in expectation)."""
    log_w = clean_log_weights(log_w)
    return float(torch.logsumexp(log_w, 0) - math.log(log_w.numel()))


def log_partition_forward(log_w: Tensor) -> float:
    """log Z estimated from target samples: -log mean(1/w) (a stochastic upper bound in expectation)."""
    log_w = clean_log_weights(log_w)
    return float(-(torch.logsumexp(-log_w, 0) - math.log(log_w.numel())))


def normalised_weights(log_w: Tensor) -> Tensor:
    """Self-normalised importance weights (sum 1; all zero when every weight is zero)."""
    log_w = clean_log_weights(log_w)
    if torch.isneginf(log_w).all():
        return torch.zeros_like(log_w)
    return torch.exp(log_w - torch.logsumexp(log_w, 0))
