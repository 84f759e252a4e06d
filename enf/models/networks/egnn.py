"""E(n)-equivariant graph network (EGNN) on dense, masked, fully connected graphs, and E-NF's dynamics.

Shapes: B graphs, N nodes (padded), D spatial dimensions, H hidden features. Every pairwise quantity is a
(B, N, N-1, .) tensor over each node's N-1 others (`neighbours`): the fully connected graph without its
self-loops, which a dense (B, N, N, .) layout would compute and then mask (a quarter of DW4's edge work).
There are no edge lists and no Python loops over edges.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from enf.geometry import remove_mean
from enf.models.networks.base import VECTOR_FIELDS, VectorField


def edge_mask_from(node_mask: Tensor) -> Tensor:
    """(B, N, N, 1) mask of edges between distinct real nodes (the dense layout of the other networks)."""
    m = node_mask.reshape(node_mask.shape[0], -1)
    n = m.shape[1]
    eye = torch.eye(n, dtype=m.dtype, device=m.device)
    return (m[:, :, None] * m[:, None, :] * (1 - eye)).unsqueeze(-1)


def neighbours(n: int, device: torch.device | None = None) -> Tensor:
    """(N, N-1) indices: row i lists the nodes j != i, so that v[:, neighbours(N)] is (B, N, N-1, .) with v_j."""
    i = torch.arange(n, device=device)
    return (i[:, None] + torch.arange(1, n, device=device)) % n


def neighbour_mask(node_mask: Tensor, idx: Tensor) -> Tensor:
    """(B, N, N-1, 1) mask of the edges i -> idx[i, k] between real nodes; node_mask is (B, N, 1)."""
    return node_mask[:, :, None, :] * node_mask[:, idx]


def neighbour_diff(x: Tensor, idx: Tensor) -> Tensor:
    """x_i - x_j over each node's neighbours: (B, N, N-1, D)."""
    return x[:, :, None, :] - x[:, idx]


class EquivariantLayer(nn.Module):
    """One E_GCL layer: message, (optional) attention gate, coordinate update, residual feature update.

    m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, a_ij), gated by sigmoid(linear(m_ij));
    x_i += sum_j (x_i - x_j) / (|x_i - x_j| + 1) * C * tanh(phi_x(m_ij));  h_i += phi_h(h_i, sum_j m_ij).
    The first linear layer of phi_e is applied to h_i and h_j separately (then broadcast), which is the same
    map as applying it to the concatenation but costs O(N) instead of O(N^2) matrix products.
    """

    def __init__(self, hidden_nf: int, edge_attr_nf: int = 1, attention: bool = True, tanh: bool = True,
                 coords_range: float = 1.0, update_coords: bool = True) -> None:
        super().__init__()
        self.hidden_nf = hidden_nf
        self.attention = attention
        self.tanh = tanh
        self.coords_range = coords_range
        act = nn.SiLU()
        self.edge_mlp = nn.Sequential(
            nn.Linear(2 * hidden_nf + 1 + edge_attr_nf, hidden_nf), act, nn.Linear(hidden_nf, hidden_nf), act)
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden_nf, hidden_nf), act, nn.Linear(hidden_nf, hidden_nf))
        if update_coords:
            last = nn.Linear(hidden_nf, 1, bias=False)
            nn.init.xavier_uniform_(last.weight, gain=0.001)
            self.coord_mlp = nn.Sequential(nn.Linear(hidden_nf, hidden_nf), act, last)
        else:
            self.coord_mlp = None
        if attention:
            self.att_mlp = nn.Sequential(nn.Linear(hidden_nf, 1), nn.Sigmoid())

    def messages(self, h: Tensor, radial: Tensor, edge_attr: Tensor, edge_mask: Tensor, idx: Tensor) -> Tensor:
        """m_ij (B, N, N-1, H) over each node's neighbours idx, zero on masked edges."""
        first = self.edge_mlp[0]
        hid = self.hidden_nf
        w = first.weight
        src = h @ w[:, :hid].T                     # (B, N, H): contribution of h_i
        dst = h @ w[:, hid:2 * hid].T              # (B, N, H): contribution of h_j
        pair = radial * w[:, 2 * hid] + edge_attr @ w[:, 2 * hid + 1:].T + first.bias
        m = self.edge_mlp[1](src[:, :, None, :] + dst[:, idx] + pair)
        m = self.edge_mlp[3](self.edge_mlp[2](m))
        if self.attention:
            m = m * self.att_mlp(m)
        return m * edge_mask

    def forward(self, h: Tensor, x: Tensor, edge_attr: Tensor, node_mask: Tensor, edge_mask: Tensor,
                idx: Tensor) -> tuple[Tensor, Tensor]:
        diff = neighbour_diff(x, idx)                                # (B, N, N-1, D): x_i - x_j
        radial = (diff * diff).sum(-1, keepdim=True)                 # (B, N, N-1, 1)
        m = self.messages(h, radial, edge_attr, edge_mask, idx)
        if self.coord_mlp is not None:
            weight = self.coord_mlp(m)
            if self.tanh:
                weight = torch.tanh(weight) * self.coords_range
            unit = diff / (torch.sqrt(radial + 1e-8) + 1)
            x = x + (unit * (weight * edge_mask)).sum(2)
        h = h + self.node_mlp(torch.cat([h, m.sum(2)], dim=-1))
        return h * node_mask, x * node_mask


class EGNN(nn.Module):
    """Input embedding, `n_layers` equivariant layers, output linear layer (the authors' EGNN structure).

    Edge attributes and the edge mask come in the neighbour layout: (B, N, N-1, .) with `neighbours(N)`.
    """

    def __init__(self, in_node_nf: int, hidden_nf: int, n_layers: int, attention: bool = True, tanh: bool = True,
                 coords_range: float = 15.0, out_node_nf: int | None = None, edge_attr_nf: int = 1) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.embedding = nn.Linear(in_node_nf, hidden_nf)
        self.embedding_out = nn.Linear(hidden_nf, out_node_nf if out_node_nf is not None else in_node_nf)
        self.layers = nn.ModuleList(
            EquivariantLayer(hidden_nf, edge_attr_nf, attention=attention, tanh=tanh,
                             coords_range=coords_range / n_layers)
            for _ in range(n_layers)
        )

    def forward(self, h: Tensor, x: Tensor, edge_attr: Tensor, node_mask: Tensor, edge_mask: Tensor,
                idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.embedding(h)
        idx = neighbours(x.shape[1], x.device) if idx is None else idx
        for layer in self.layers:
            h, x = layer(h, x, edge_attr, node_mask, edge_mask, idx)
        return self.embedding_out(h) * node_mask, x


class EGNNDynamics(VectorField):
    """E-NF's vector field: EGNN with time as a node feature; velocity = output minus input positions.

    With node features (QM9) the node input is [h, t] and the feature velocity is the network's output
    features without the time channel. Edge attribute a_ij: squared distance at the input positions.
    """

    def __init__(self, n_dim: int, n_features: int = 0, hidden_nf: int = 32, n_layers: int = 3,
                 attention: bool = True, tanh: bool = True, coords_range: float = 15.0,
                 condition_time: bool = True) -> None:
        super().__init__()
        self.n_dim = n_dim
        self.n_features = n_features
        self.condition_time = condition_time
        in_nf = max(n_features, 1) + (1 if condition_time and n_features > 0 else 0)
        self.egnn = EGNN(in_nf, hidden_nf, n_layers, attention=attention, tanh=tanh, coords_range=coords_range)

    def forward(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, _ = xh.shape
        node_mask = xh.new_ones(b, n, 1) if mask is None else mask.to(xh.dtype).reshape(b, n, 1)
        idx = neighbours(n, xh.device)
        edge_mask = neighbour_mask(node_mask, idx)
        xh = xh * node_mask
        x = xh[..., : self.n_dim]
        if self.n_features == 0:
            h = node_mask * (t if self.condition_time else 1.0)
        else:
            h = xh[..., self.n_dim:]
            if self.condition_time:
                h = torch.cat([h, node_mask * t], dim=-1)
        diff = neighbour_diff(x, idx)
        edge_attr = (diff * diff).sum(-1, keepdim=True)
        h_out, x_out = self.egnn(h, x, edge_attr, node_mask, edge_mask, idx)
        vel = remove_mean((x_out - x) * node_mask, node_mask)
        if self.n_features == 0:
            return vel
        if self.condition_time:
            h_out = h_out[..., :-1]
        return torch.cat([vel, h_out * node_mask], dim=-1)


@VECTOR_FIELDS.register("enf", defaults={
    "model": {"attention": True, "tanh": True, "coords_range": 15.0, "condition_time": True},
    "train": {"lr": 5e-4},
    "by_dataset": {"qm9": {"train": {"lr": 2e-4}}, "qm9_positional": {"train": {"lr": 2e-4}}},
})
def build_enf(n_dim: int, n_features: int, cfg: dict[str, Any]) -> VectorField:
    """E-NF: EGNN dynamics with attention and the tanh-bounded coordinate update."""
    return EGNNDynamics(
        n_dim, n_features, hidden_nf=int(cfg["hidden_nf"]), n_layers=int(cfg["n_layers"]),
        attention=bool(cfg["attention"]), tanh=bool(cfg["tanh"]),
        coords_range=float(cfg["coords_range"]), condition_time=bool(cfg["condition_time"]),
    )
