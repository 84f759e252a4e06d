"""Argmax + variational dequantisation of QM9's discrete node features (atom type, atomic number).

A q-network (an EGNN over the molecule) predicts a diagonal Gaussian q(u | x, h) per atom and feature. The
atom type's one-hot vector becomes a point of the argmax partition of its class k: u_k stays, every other
entry becomes u_k - softplus(u_k - u_j) < u_k, so argmax recovers k. The atomic number c becomes
v = c + sigmoid(u) in [c, c + 1), so floor recovers c. The flow models the continuous v; the likelihood bound
adds -log q(v | x, h), which includes both transforms' log-determinants.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enf.errors import EnfError
from enf.geometry import node_mask_like
from enf.models.networks.egnn import EGNN, neighbour_mask, neighbours

LOG_2PI = math.log(2 * math.pi)


def _sum(x: Tensor) -> Tensor:
    """Sum over every axis but the batch axis."""
    return x.reshape(x.shape[0], -1).sum(1)


def argmax_partition(one_hot: Tensor, u: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """Map u (B, N, K) into the argmax cell of `one_hot`'s class; return the point and log|det| (B,).

    With T = u_k for the true class k: z_k = T and z_j = T - softplus(T - u_j) for j != k, whose derivative
    is sigmoid(T - u_j), so log|det| = sum_{j != k} log sigmoid(T - u_j) over real atoms.
    """
    top = (one_hot * u).sum(-1, keepdim=True)
    z = one_hot * u + m * (1 - one_hot) * (top - F.softplus(top - u))
    logdet = _sum((1 - one_hot) * F.logsigmoid(top - u) * m)
    return z * m, logdet


def sigmoid_with_logdet(u: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """s = sigmoid(u) and log|ds/du| = log sigmoid(u) + log sigmoid(-u), summed over real atoms, (B,)."""
    return torch.sigmoid(u) * m, _sum(m * (F.logsigmoid(u) + F.logsigmoid(-u)))


class QNetwork(nn.Module):
    """The q-network: an EGNN (no attention, coordinate update without tanh) from (x, h) to 2 * F outputs.

    Edges join every pair of distinct real atoms; no edge attributes (the layers see |x_i - x_j|^2 only).
    The coordinates it updates feed the distances of its later layers; its final coordinates are unused.
    """

    def __init__(self, n_features: int, hidden_nf: int = 64, n_layers: int = 4) -> None:
        super().__init__()
        self.n_features = n_features
        self.egnn = EGNN(n_features, hidden_nf, n_layers, attention=False, tanh=False,
                         out_node_nf=2 * n_features, edge_attr_nf=0)

    def forward(self, x: Tensor, h: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mu, log_sigma), each (B, N, F), zero on padded atoms."""
        m = node_mask_like(x, mask)
        b, n, _ = x.shape
        idx = neighbours(n, x.device)
        edge_mask = neighbour_mask(m, idx)
        no_attr = x.new_zeros(b, n, n - 1, 0)
        out, _ = self.egnn(h * m, x * m, no_attr, m, edge_mask, idx)
        return out[..., : self.n_features], out[..., self.n_features:]


class ArgmaxVariationalDequantizer(nn.Module):
    """q(v | x, h) for one-hot atom types (K classes) plus one integer feature (the atomic number)."""

    def __init__(self, n_categories: int = 5, hidden_nf: int = 64, n_layers: int = 4) -> None:
        super().__init__()
        self.n_categories = n_categories
        self.n_features = n_categories + 1
        self.net = QNetwork(self.n_features, hidden_nf, n_layers)

    @staticmethod
    def _charges(charges: Tensor) -> Tensor:
        return charges if charges.dim() == 3 else charges.unsqueeze(-1)

    def q_params(self, x: Tensor, one_hot: Tensor, charges: Tensor,
                 mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The q-network's mean and log standard deviation of u, (B, N, K + 1) each."""
        h = torch.cat([one_hot, self._charges(charges)], dim=-1)
        return self.net(x, h, mask)

    def forward(self, x: Tensor, one_hot: Tensor, charges: Tensor, mask: Tensor | None = None,
                eps: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Dequantise: v (B, N, K + 1) = [argmax-partition point, charge + sigmoid(u)] and log q(v | x, h) (B,).

        `eps` (B, N, K + 1) replaces the standard normal draw (u = mu + exp(log_sigma) * eps), for tests.
        """
        m = node_mask_like(x, mask)
        charges = self._charges(charges)
        if one_hot.shape[-1] != self.n_categories:
            raise EnfError(f"one_hot has {one_hot.shape[-1]} classes; the dequantiser expects {self.n_categories}")
        row_sums = one_hot.sum(-1, keepdim=True)
        if ((row_sums - 1) * m).abs().max() > 1e-6:
            raise EnfError("one_hot: every real atom must have exactly one class set")
        mu, log_sigma = self.q_params(x, one_hot, charges, mask)
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        eps = eps * m
        log_q_eps = -0.5 * _sum(eps * eps) - 0.5 * LOG_2PI * _sum(m.expand_as(eps))
        u = (mu + torch.exp(log_sigma) * eps) * m
        log_q_u = log_q_eps - _sum(log_sigma * m)
        v_cat, ld_cat = argmax_partition(one_hot, u[..., : self.n_categories], m)
        s_int, ld_int = sigmoid_with_logdet(u[..., self.n_categories:], m)
        v = torch.cat([v_cat, (charges + s_int) * m], dim=-1)
        return v, log_q_u - ld_cat - ld_int

    def decode(self, v: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Back to discrete features: one-hot of the argmax (B, N, K) and floor of the last feature (B, N)."""
        m = node_mask_like(v, mask)
        one_hot = F.one_hot(v[..., : self.n_categories].argmax(-1), self.n_categories).to(v.dtype) * m
        charges = torch.floor(v[..., self.n_categories]) * m[..., 0]
        return one_hot, charges
