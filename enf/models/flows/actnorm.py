"""ActNorm for point clouds with node features, as E-NF used it on QM9 before the continuous flow.

Positions get one shared log-scale and no shift (a shift would break translation invariance); each node
feature gets a shift and a log-scale. All are initialised from data (a batch of training molecules) so that
the flow starts on unit-scale inputs. Masks keep padded nodes at zero and out of the log-determinant.

Log-determinant convention: the positions' term counts M * n_dim dimensions per molecule (every real atom's
every coordinate), as the authors' released model does. On the (M - 1) * n_dim dimensional zero-centre-of-mass
subspace that the base density lives on, the exact term would count (M - 1) * n_dim; the two differ by
n_dim * x_log_s nats per molecule (2.46 nats for the released QM9 model). `position_logdet="subspace"`
selects the exact count; the default reproduces the authors' numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from enf.config import ACTNORM_POSITION_LOGDETS
from enf.geometry import node_mask_like


class ActNorm(nn.Module):
    """y = [x * exp(-s_x), (h - t_h) * exp(-s_h)] on real nodes; log|det dy/dx| counted over real nodes only.

    Parameter names (`x_log_s`, `h_t`, `h_log_s`, buffer `initialized`) follow the authors' module so that
    their released tensors load one to one.
    """

    def __init__(self, n_dim: int, n_features: int, position_logdet: str = "all") -> None:
        super().__init__()
        if position_logdet not in ACTNORM_POSITION_LOGDETS:
            raise ValueError(f"position_logdet must be one of {ACTNORM_POSITION_LOGDETS}, got {position_logdet!r}")
        self.n_dim = n_dim
        self.n_features = n_features
        self.position_logdet = position_logdet
        self.x_log_s = nn.Parameter(torch.zeros(1, 1))
        self.h_t = nn.Parameter(torch.zeros(1, n_features))
        self.h_log_s = nn.Parameter(torch.zeros(1, n_features))
        self.register_buffer("initialized", torch.tensor(0))

    @torch.no_grad()
    def initialize(self, xh: Tensor, mask: Tensor | None = None) -> None:
        """Set the scales (and feature shifts) from a batch of inputs (B, N, n_dim + n_features).

        Positions: s_x = log(sqrt(mean over real atoms of |x_i - c|^2 + 1e-5) + 1e-8), one scale for all
        coordinates, c = (sum of all real coordinates) / (real atoms), which is zero for centred molecules
        (the authors' rule); features: per-feature mean and log standard deviation over real atoms.
        """
        m = node_mask_like(xh, mask)
        count = m.sum()
        x = xh[..., : self.n_dim] * m
        centre = x.sum() / count
        sq_norm = (((x - centre) * m) ** 2).sum() / count
        self.x_log_s.copy_(torch.log(torch.sqrt(sq_norm + 1e-5) + 1e-8).reshape(1, 1))
        if self.n_features:
            h = xh[..., self.n_dim:] * m
            mean = h.sum(dim=(0, 1)) / count
            var = (((h - mean) * m) ** 2).sum(dim=(0, 1)) / count
            self.h_t.copy_(mean.reshape(1, -1))
            self.h_log_s.copy_(torch.log(torch.sqrt(var + 1e-5) + 1e-8).reshape(1, -1))
        self.initialized.fill_(1)

    def _logdet(self, xh: Tensor, m: Tensor) -> Tensor:
        n_real = m.sum(dim=(1, 2))
        n_pos = n_real - 1 if self.position_logdet == "subspace" else n_real
        return -(n_pos * self.n_dim * self.x_log_s.reshape(()) + n_real * self.h_log_s.sum())

    def forward(self, xh: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Normalise: return y (B, N, D + F) and log|det dy/dxh| (B,)."""
        m = node_mask_like(xh, mask)
        x = xh[..., : self.n_dim] * torch.exp(-self.x_log_s)
        h = (xh[..., self.n_dim:] - self.h_t) * torch.exp(-self.h_log_s)
        return torch.cat([x, h], dim=-1) * m, self._logdet(xh, m)

    def reverse(self, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Undo `forward`: xh = [y_x * exp(s_x), y_h * exp(s_h) + t_h] on real nodes, zero elsewhere."""
        m = node_mask_like(y, mask)
        x = y[..., : self.n_dim] * torch.exp(self.x_log_s)
        h = y[..., self.n_dim:] * torch.exp(self.h_log_s) + self.h_t
        return torch.cat([x, h], dim=-1) * m
