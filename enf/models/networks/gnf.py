"""GNF baselines: a continuous flow whose vector field is a plain (not E(n)-equivariant) graph network.

The node input holds the coordinates themselves ([t, x_i]; with node features [x_i, h_i, t]), messages
phi_e(h_i, h_j) see no distances, and a linear head maps the last node embedding to the velocity. The field
is permutation-equivariant but not rotation-equivariant; GNF-att-aug makes up for that in part by training on
randomly rotated samples (`train.augment_rotation`, applied by the trainer).

Shapes: B graphs, N nodes (padded), D spatial dimensions, F node features, H hidden features. Pairwise
quantities are dense (B, N, N, .) tensors; there are no edge lists and no Python loops over edges.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from enf.geometry import remove_mean
from enf.models.networks.base import VECTOR_FIELDS, VectorField
from enf.models.networks.egnn import edge_mask_from


class GraphLayer(nn.Module):
    """One GCL layer: m_ij = phi_e(h_i, h_j) (times sigmoid(linear(m_ij)) with attention), summed over j;
    h_i += phi_h(h_i, sum_j m_ij).

    phi_e's first linear layer is applied to h_i and h_j separately and broadcast over pairs: the same map as
    on the concatenation, at O(N) instead of O(N^2) matrix products.
    """

    def __init__(self, hidden_nf: int, attention: bool = False) -> None:
        super().__init__()
        self.hidden_nf = hidden_nf
        self.attention = attention
        act = nn.SiLU()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * hidden_nf, hidden_nf), act, nn.Linear(hidden_nf, hidden_nf), act)
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden_nf, hidden_nf), act, nn.Linear(hidden_nf, hidden_nf))
        if attention:
            self.att_mlp = nn.Sequential(nn.Linear(hidden_nf, 1), nn.Sigmoid())

    def forward(self, h: Tensor, node_mask: Tensor, edge_mask: Tensor) -> Tensor:
        first = self.edge_mlp[0]
        w = first.weight
        src = h @ w[:, : self.hidden_nf].T + first.bias         # (B, N, H): contribution of h_i
        dst = h @ w[:, self.hidden_nf:].T                       # (B, N, H): contribution of h_j
        m = self.edge_mlp[1](src[:, :, None, :] + dst[:, None, :, :])      # (B, N, N, H)
        m = self.edge_mlp[3](self.edge_mlp[2](m))
        gate = edge_mask * self.att_mlp(m) if self.attention else edge_mask     # (B, N, N, 1)
        # one gate for attention and mask: the gated messages are a temporary, not kept for the backward pass
        agg = (m * gate).sum(2)                                 # (B, N, H)
        h = h + self.node_mlp(torch.cat([h, agg], dim=-1))
        return h * node_mask


class GNFDynamics(VectorField):
    """The GNF vector field: embedding, `n_layers` residual graph layers, linear head, mean removed.

    Positions only: node input [t, x_i], output the velocity of x_i. With node features (QM9): node input
    [x_i, h_i, t] and output of the same width, read as [velocity of x_i, velocity of h_i, unused time slot].
    `self_edges` adds the message m_ii (the authors' QM9 graph had self-loops; their particle graphs did not).
    """

    def __init__(self, n_dim: int, n_features: int = 0, hidden_nf: int = 32, n_layers: int = 3,
                 attention: bool = False, condition_time: bool = True, self_edges: bool = False) -> None:
        super().__init__()
        self.n_dim = n_dim
        self.n_features = n_features
        self.condition_time = condition_time
        self.self_edges = self_edges
        if n_features == 0:
            in_nf, out_nf = 1 + n_dim, n_dim
        else:
            in_nf = n_dim + n_features + (1 if condition_time else 0)
            out_nf = in_nf
        self.embedding = nn.Linear(in_nf, hidden_nf)
        self.layers = nn.ModuleList(GraphLayer(hidden_nf, attention) for _ in range(n_layers))
        self.embedding_out = nn.Linear(hidden_nf, out_nf)

    def forward(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, _ = xh.shape
        node_mask = xh.new_ones(b, n, 1) if mask is None else mask.to(xh.dtype).reshape(b, n, 1)
        edge_mask = edge_mask_from(node_mask)
        if self.self_edges:
            edge_mask = edge_mask + torch.diag_embed(node_mask[..., 0]).unsqueeze(-1)
        xh = xh * node_mask
        x = xh[..., : self.n_dim]
        time = node_mask * (t if self.condition_time else 1.0)
        if self.n_features == 0:
            inp = torch.cat([time, x], dim=-1)
        elif self.condition_time:
            inp = torch.cat([xh, time], dim=-1)
        else:
            inp = xh
        h = self.embedding(inp) * node_mask
        for layer in self.layers:
            h = layer(h, node_mask, edge_mask)
        out = self.embedding_out(h) * node_mask
        vel = remove_mean(out[..., : self.n_dim], node_mask)
        if self.n_features == 0:
            return vel
        return torch.cat([vel, out[..., self.n_dim: self.n_dim + self.n_features]], dim=-1)


def _build(n_dim: int, n_features: int, cfg: dict[str, Any]) -> VectorField:
    return GNFDynamics(n_dim, n_features, hidden_nf=int(cfg["hidden_nf"]), n_layers=int(cfg["n_layers"]),
                       attention=bool(cfg["attention"]), condition_time=bool(cfg["condition_time"]),
                       self_edges=bool(cfg["self_edges"]))


def _defaults(attention: bool, augment: bool) -> dict[str, Any]:
    """Registered defaults of one GNF variant (sizes come from the data set: nf 32 x 3 or nf 64 x 6).

    Learning rates: the authors' README commands (1e-3 on DW4/LJ13, 5e-4 on QM9-positional and QM9).
    """
    return {
        "model": {"attention": attention, "condition_time": True, "self_edges": False},
        "train": {"lr": 1e-3, "augment_rotation": augment},
        "by_dataset": {"qm9_positional": {"train": {"lr": 5e-4}},
                       "qm9": {"train": {"lr": 5e-4}, "model": {"self_edges": True}}},
    }


@VECTOR_FIELDS.register("gnf", defaults=_defaults(attention=False, augment=False))
def build_gnf(n_dim: int, n_features: int, cfg: dict[str, Any]) -> VectorField:
    """GNF: the non-equivariant graph network field, no attention, no augmentation."""
    return _build(n_dim, n_features, cfg)


@VECTOR_FIELDS.register("gnf_att", defaults=_defaults(attention=True, augment=False))
def build_gnf_att(n_dim: int, n_features: int, cfg: dict[str, Any]) -> VectorField:
    """GNF-att: the GNF field with the sigmoid attention gate on messages."""
    return _build(n_dim, n_features, cfg)


@VECTOR_FIELDS.register("gnf_att_aug", defaults=_defaults(attention=True, augment=True))
def build_gnf_att_aug(n_dim: int, n_features: int, cfg: dict[str, Any]) -> VectorField:
    """GNF-att-aug: GNF-att trained on samples each rotated by its own Haar-random rotation."""
    return _build(n_dim, n_features, cfg)
