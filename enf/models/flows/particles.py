"""The density model of a particle system: a CNF from the zero-centre-of-mass Gaussian to positions."""

from __future__ import annotations

import torch
from torch import Tensor

from enf.geometry import remove_mean
from enf.models.flows.base import DensityModel
from enf.models.flows.cnf import CNF
from enf.models.flows.distributions import com_free_gaussian_log_prob, sample_com_free_gaussian


class ParticleFlow(DensityModel):
    """p(x) for configurations x (B, N, D) with their centre of mass removed.

    `nll` returns per-sample negative log-likelihoods in nats on the (N-1)*D dimensional subspace.
    """

    def __init__(self, cnf: CNF, n_particles: int, n_dim: int) -> None:
        super().__init__()
        self.cnf = cnf
        self.n_particles = n_particles
        self.n_dim = n_dim

    @property
    def event_shape(self) -> tuple[int, int]:
        return (self.n_particles, self.n_dim)

    def continuous_state(self, batch: dict[str, Tensor]) -> tuple[Tensor, None, int]:
        """Centred positions: what `nll` integrates."""
        return remove_mean(batch["positions"]), None, int(self.n_dim)

    def base_log_prob(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        return com_free_gaussian_log_prob(z, mask)

    def nll(self, batch: dict[str, Tensor], trace: str | None = None) -> dict[str, Tensor]:
        """Per-sample NLL (B,) and the regulariser (B,) for `batch['positions']`."""
        x, mask, _ = self.continuous_state(batch)
        z, log_det, reg = self.cnf(x, mask, trace=trace)
        log_px = self.base_log_prob(z, mask) + log_det
        return {"nll": -log_px, "reg": reg, "z": z}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draw n configurations by the reverse solve from base samples."""
        p = next(self.parameters())
        z = sample_com_free_gaussian((n, self.n_particles, self.n_dim), generator=generator, dtype=p.dtype)
        x = self.cnf.decode(z.to(p.device))
        return {"positions": x, "failed": ~torch.isfinite(x).flatten(1).all(1)}
