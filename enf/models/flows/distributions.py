"""Base distributions: the Gaussian on the zero-centre-of-mass subspace (positions) and a standard Gaussian
(node features), both masked so that molecules of different sizes share a batch."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from enf.geometry import node_mask_like, remove_mean

LOG_2PI = math.log(2 * math.pi)


def com_free_gaussian_log_prob(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """log N(x; 0, I) restricted to the subspace sum_i x_i = 0: -|x|^2/2 - (M-1) n/2 log(2 pi), shape (B,)."""
    m = node_mask_like(x, mask)
    n_real = m.sum(dim=(1, 2))
    sq = (x * x * m).sum(dim=(1, 2))
    return -0.5 * sq - 0.5 * (n_real - 1) * x.shape[-1] * LOG_2PI


def gaussian_log_prob(h: Tensor, mask: Tensor | None = None) -> Tensor:
    """Standard normal log-density of the real nodes' features, shape (B,)."""
    m = node_mask_like(h, mask)
    n_dims = m.sum(dim=(1, 2)) * h.shape[-1]
    return -0.5 * (h * h * m).sum(dim=(1, 2)) - 0.5 * n_dims * LOG_2PI


def sample_com_free_gaussian(shape: tuple[int, int, int], mask: Tensor | None = None,
                             generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                             device: torch.device | str = "cpu") -> Tensor:
    """Draw (B, N, D) from the zero-centre-of-mass Gaussian (projection of a standard normal)."""
    x = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return remove_mean(x, mask)


def sample_gaussian(shape: tuple[int, int, int], mask: Tensor | None = None,
                    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Tensor:
    """Draw (B, N, F) standard normal features, zero at padded nodes."""
    h = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return h * node_mask_like(h, mask)
