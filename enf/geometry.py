"""Centre-of-mass handling, masks and uniformly random orthogonal maps for point clouds (B, N, D)."""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

Points = TypeVar("Points", Tensor, np.ndarray)


def node_mask_like(x: Tensor, mask: Tensor | None) -> Tensor:
    """The (B, N, 1) float mask of real nodes; all ones when `mask` is None."""
    if mask is None:
        return x.new_ones(x.shape[0], x.shape[1], 1)
    return mask.to(x.dtype).reshape(x.shape[0], x.shape[1], 1)


def n_nodes(x: Tensor, mask: Tensor | None) -> Tensor:
    """Number of real nodes per sample, (B,) in x's dtype."""
    return node_mask_like(x, mask).sum(dim=(1, 2))


def remove_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Subtract the mean over real nodes (padding stays zero)."""
    m = node_mask_like(x, mask)
    mean = (x * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1)
    return (x - mean) * m


def random_orthogonal(batch: int, dim: int, *, reflections: bool = False, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """(batch, dim, dim) Haar-uniform rotations (SO(d)), or orthogonal maps (O(d)) when `reflections`.

    QR of a Gaussian matrix with the signs of R's diagonal folded into Q gives the Haar measure on O(d);
    flipping one column of the improper ones then gives the Haar measure on SO(d).
    """
    a = torch.randn(batch, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    if not reflections:
        det = torch.linalg.det(q)
        q[:, :, 0] = q[:, :, 0] * det.sign().unsqueeze(-1)
    return q.to(dtype=dtype, device=device)


def random_rotation_2d(batch: int, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """(batch, 2, 2) rotations by uniform angles in [0, 2 pi)."""
    theta = torch.rand(batch, generator=generator, dtype=torch.float64) * 2 * math.pi
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2).to(dtype)


def rotate(x: Tensor, rot: Tensor) -> Tensor:
    """Apply one (D, D) or per-sample (B, D, D) orthogonal map to points (B, N, D): x_i -> R x_i."""
    if rot.dim() == 2:
        return x @ rot.transpose(-1, -2)
    return torch.einsum("bij,bnj->bni", rot, x)


def pair_distances(x: Points, matrix: bool = False) -> Points:
    """Distances |x_i - x_j| of configurations (B, N, D), torch or numpy (float64), in the input's kind.

    The unique pairs i < j (B, N (N - 1) / 2) for histograms and data checks; with `matrix` the full (B, N, N)
    matrix that bond detection indexes by atom pair (numpy only).
    """
    if isinstance(x, Tensor):
        if matrix:
            raise ValueError("pair_distances: the distance matrix is computed for numpy arrays only")
        i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1)
        return (x[:, i] - x[:, j]).pow(2).sum(-1).sqrt()
    x = np.asarray(x, dtype=np.float64)
    if matrix:
        diff = x[:, :, None, :] - x[:, None, :, :]
        return np.sqrt(np.einsum("nijk,nijk->nij", diff, diff))
    i, j = np.triu_indices(x.shape[1], k=1)
    return np.linalg.norm(x[:, i] - x[:, j], axis=-1)
