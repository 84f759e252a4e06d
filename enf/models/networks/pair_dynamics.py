"""Pairwise-distance baselines of Koehler et al. (2020): simple dynamics and kernel dynamics.

Both are E(n)-equivariant by construction (they see positions only through x_i - x_j and |x_i - x_j|) and
positions-only. Pair quantities are dense (B, N, N, .) tensors over ordered pairs of distinct real nodes.
An RBF of centre mu and width g is exp(-(d - mu)^2 / g^2); a set of them is normalised to sum to one.
Distances are sqrt(|x_i - x_j|^2 + 1e-6), as in the authors' code, which also keeps gradients finite on
the (masked) diagonal.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from enf.errors import EnfError
from enf.geometry import remove_mean
from enf.models.networks.base import VECTOR_FIELDS, VectorField
from enf.models.networks.egnn import edge_mask_from

DIST_EPS = 1e-6  # added to squared distances
NORM_EPS = 1e-6  # simple dynamics: added to every RBF; kernel dynamics: added to the RBFs' sum


def pair_geometry(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Difference vectors r_ij = x_i - x_j (B, N, N, D), distances (B, N, N, 1) and the edge mask (B, N, N, 1)."""
    b, n, _ = x.shape
    node_mask = x.new_ones(b, n, 1) if mask is None else mask.to(x.dtype).reshape(b, n, 1)
    r = x[:, :, None, :] - x[:, None, :, :]
    d = torch.sqrt((r * r).sum(-1, keepdim=True) + DIST_EPS)
    return r, d, edge_mask_from(node_mask)


def _positions_only(name: str, n_features: int) -> None:
    if n_features:
        raise EnfError(f"model {name!r} models positions only; it cannot take {n_features} node features "
                       "(use it on dw4, lj13 or qm9_positional)")


class SimpleDynamics(VectorField):
    """v = -grad_x U(x), U = sum over ordered pairs i != j of MLP(rbf(d_ij)); time-free.

    RBFs (fixed centres and widths) get 1e-6 added each before normalising; the MLP has tanh between layers.
    """

    compilable = False  # its velocity is an autograd gradient of the potential

    def __init__(self, n_dim: int, n_rbf: int = 50, rbf_max: float = 8.0, rbf_width: float = 0.5,
                 mlp_hidden: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        self.n_dim = n_dim
        self.register_buffer("mus", torch.linspace(0.0, rbf_max, n_rbf))
        self.register_buffer("widths", torch.full((n_rbf,), float(rbf_width)))
        sizes = [n_rbf, *mlp_hidden, 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.mlp = nn.Sequential(*layers)

    def potential(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """U(x) per sample (B,)."""
        _, d, edge_mask = pair_geometry(x, mask)
        rbf = torch.exp(-((d - self.mus) / self.widths) ** 2) + NORM_EPS
        rbf = rbf / rbf.sum(-1, keepdim=True)
        return (self.mlp(rbf) * edge_mask).sum(dim=(1, 2, 3))

    def forward(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            x = xh if xh.requires_grad else xh.detach().requires_grad_(True)
            u = self.potential(x, mask)
            grad = torch.autograd.grad(u.sum(), x, create_graph=keep_graph)[0]
        return remove_mean(-grad, mask)


def normalised_rbf(d: Tensor, mus: Tensor, neg_log_widths: Tensor,
                   derivative: bool = False) -> tuple[Tensor, Tensor | None]:
    """Normalised RBFs rho_l(d) = g_l / (1e-6 + sum g) (..., L), and d rho_l / d d when `derivative`."""
    inv_w2 = torch.exp(2 * neg_log_widths)
    diff = d - mus
    g = torch.exp(-diff * diff * inv_w2)
    s = NORM_EPS + g.sum(-1, keepdim=True)
    rho = g / s
    if not derivative:
        return rho, None
    dg = -2 * diff * inv_w2 * g
    return rho, dg / s - rho * dg.sum(-1, keepdim=True) / s


def compute_gammas(mus: Tensor, gain: Tensor | float = 1.0) -> Tensor:
    """Koehler et al.'s RBF widths for centres `mus`: gain * (mus[-1] - mus[0]) / sqrt(len(mus))."""
    return torch.ones_like(mus) * gain * (mus[-1] - mus[0]) / math.sqrt(mus.shape[-1])


def kernel_rbf_settings(variant: str, n_rbf: int = 50, n_time_rbf: int = 10) -> dict[str, Tensor]:
    """Centres and initial widths of the distance and time RBFs of kernel dynamics.

    standard (DW4, QM9-positional): centres linspace(0, 8), widths 0.5; time widths 0.3.
    lj13: centres (m - 1.5)^2 / 32 for m = linspace(0, 16), widths 0.3 + 48 ((mu - 1.5) / 32)^2; time widths
    compute_gammas(time centres, gain 0.3 + 2 ((t - 0.5) / 2)^2) (the authors' `kernel_dynamics_lj13`).
    """
    mus_time = torch.linspace(0.0, 1.0, n_time_rbf, dtype=torch.float64)
    if variant == "standard":
        mus = torch.linspace(0.0, 8.0, n_rbf, dtype=torch.float64)
        widths = torch.full_like(mus, 0.5)
        widths_time = torch.full_like(mus_time, 0.3)
    elif variant == "lj13":
        d_max = 16.0
        m = torch.linspace(0.0, d_max, n_rbf, dtype=torch.float64)
        mus = (2 * ((m - 1.5) / d_max / 2) ** 2 * d_max).sort().values
        widths = 0.3 + 3 * ((mus - 1.5) / d_max / 2) ** 2 * d_max
        widths_time = compute_gammas(mus_time, gain=0.3 + 2 * ((mus_time - 0.5) / 2) ** 2)
    else:
        raise EnfError(f"model.variant must be 'standard' or 'lj13' for kernel_dynamics, got {variant!r}")
    out = {"mus": mus, "widths": widths, "mus_time": mus_time, "widths_time": widths_time}
    return {k: v.to(torch.get_default_dtype()) for k, v in out.items()}


class KernelDynamics(VectorField):
    """v_i = sum_j (x_i - x_j) f(d_ij, t), f = sum_k tau_k(t) [sum_l (rho_l(d) + w_l^2) W_lk + b_k].

    rho: normalised distance RBFs, tau: normalised time RBFs, both with trainable widths (fixed centres).
    The divergence has the closed form sum over ordered pairs of D f + f'(d) |r|^2 / d.
    """

    closed_form_divergence = True

    def __init__(self, n_dim: int, variant: str = "standard", n_rbf: int = 50, n_time_rbf: int = 10) -> None:
        super().__init__()
        self.n_dim = n_dim
        rbf = kernel_rbf_settings(variant, n_rbf, n_time_rbf)
        self.register_buffer("mus", rbf["mus"])
        self.register_buffer("mus_time", rbf["mus_time"])
        self.neg_log_widths = nn.Parameter(-rbf["widths"].log())
        self.neg_log_widths_time = nn.Parameter(-rbf["widths_time"].log())
        self.weight = nn.Parameter(torch.randn(n_rbf, n_time_rbf) / math.sqrt(n_rbf))
        self.bias = nn.Parameter(torch.zeros(n_time_rbf))
        self.importance = nn.Parameter(torch.zeros(n_rbf))

    def _magnitudes(self, t: Tensor, d: Tensor, derivative: bool = False) -> tuple[Tensor, Tensor | None]:
        """f(d, t) shaped like d, and df/dd when `derivative`."""
        tau, _ = normalised_rbf(t.reshape(1).to(d.dtype), self.mus_time, self.neg_log_widths_time)   # (K,)
        coef = (self.weight @ tau)[:, None]                                              # (L, 1)
        rho, drho = normalised_rbf(d, self.mus, self.neg_log_widths, derivative)         # (B, N, N, L)
        f = rho @ coef + ((self.importance ** 2) @ coef + self.bias @ tau)
        return f, (drho @ coef if drho is not None else None)

    def forward(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        r, d, edge_mask = pair_geometry(xh, mask)
        f, _ = self._magnitudes(t, d)
        # the pair sum is antisymmetric, so its mean is zero up to rounding; removing it keeps the contract exact
        return remove_mean((r * (f * edge_mask)).sum(2), mask)

    def divergence(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        r, d, edge_mask = pair_geometry(xh, mask)
        f, df = self._magnitudes(t, d, derivative=True)
        r2 = (r * r).sum(-1, keepdim=True)
        return ((self.n_dim * f + df * r2 / d) * edge_mask).sum(dim=(1, 2, 3))


@VECTOR_FIELDS.register("simple_dynamics", defaults={
    "model": {"hidden_nf": None, "n_layers": None, "n_rbf": 50, "rbf_max": 8.0, "rbf_width": 0.5,
              "mlp_hidden": [64, 32]},
    "flow": {"regularization": 0.0},
    "train": {"lr": 1e-3},
    "by_dataset": {"qm9_positional": {"train": {"lr": 2e-4}}},
})
def build_simple_dynamics(n_dim: int, n_features: int, cfg: dict[str, Any]) -> VectorField:
    """Simple dynamics: the negative gradient of a learned pair potential (Koehler et al. 2020)."""
    _positions_only("simple_dynamics", n_features)
    return SimpleDynamics(n_dim, n_rbf=int(cfg["n_rbf"]), rbf_max=float(cfg["rbf_max"]),
                          rbf_width=float(cfg["rbf_width"]), mlp_hidden=tuple(int(h) for h in cfg["mlp_hidden"]))


@VECTOR_FIELDS.register("kernel_dynamics", defaults={
    "model": {"hidden_nf": None, "n_layers": None, "variant": "standard", "n_rbf": 50, "n_time_rbf": 10},
    "flow": {"rtol": 1e-5, "atol": 1e-10, "regularization": 0.0},
    "train": {"lr": 1e-3},
    "by_dataset": {"lj13": {"model": {"variant": "lj13"}}, "qm9_positional": {"train": {"lr": 5e-4}}},
})
def build_kernel_dynamics(n_dim: int, n_features: int, cfg: dict[str, Any]) -> VectorField:
    """Kernel dynamics: pair forces from RBF kernels in distance and time, with an exact divergence."""
    _positions_only("kernel_dynamics", n_features)
    return KernelDynamics(n_dim, variant=str(cfg["variant"]), n_rbf=int(cfg["n_rbf"]),
                          n_time_rbf=int(cfg["n_time_rbf"]))
