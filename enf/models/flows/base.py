"""The one interface every density model of enf implements, and that every caller uses.

Training, flow matching, evaluation, sampling, Boltzmann evaluation and the CLI talk to a model only through
`DensityModel`: they never ask which kind of model it is. A model is a CNF (`cnf`) plus what it does around it
(centring, dequantisation, ActNorm, a size distribution); the members are

- `nll(batch, trace=...)`: per-sample negative log-likelihood (B,) and the CNF regulariser (B,) (+ parts);
- `sample(n, generator=...)`: n draws from the model as arrays of the data set's layout, `failed` flagged;
- `initialize(first_batch, train_data)`: data-dependent initialisation before training (no-op by default);
- `clip_parameters()`: the parameters whose gradient norm is clipped (all of them by default);
- `continuous_state(batch)`: the CNF's t = 0 state (xh, mask, n_dim) of a batch, as `nll` builds it (the state a
  flow-matching objective regresses on);
- `base_log_prob(z, mask)`: the base density of latents z, as `nll` scores them;
- `event_shape`: the (nodes, n_dim) shape of every sample of a fixed-size, positions-only model (particle systems,
  whose energy a Boltzmann evaluation needs), None for a model of variable-size samples (molecules);
- `last_nfe`: the function evaluations of the CNF's last solve.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from enf.models.flows.cnf import CNF


class DensityModel(nn.Module, ABC):
    """A normalizing flow p(x) around a CNF: likelihood, sampling and the hooks training needs (module doc)."""

    cnf: CNF
    n_dim: int

    @abstractmethod
    def nll(self, batch: dict[str, Tensor], trace: str | None = None) -> dict[str, Tensor]:
        """Per-sample NLL (B,) in nats under key "nll" and the CNF regulariser (B,) under "reg"."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """n samples in the data set's array layout, with a boolean `failed` (B,) for failed solves."""

    @abstractmethod
    def continuous_state(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None, int]:
        """The CNF's t = 0 state of `batch`: (xh (B, N, C), mask (B, N) or None, n_dim), without a graph
        into the preprocessing (what `nll` integrates; flow matching regresses the field on it)."""

    @abstractmethod
    def base_log_prob(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """log p_base(z) (B,) of latents z (t = 1) of the CNF."""

    @property
    def event_shape(self) -> tuple[int, int] | None:
        """(nodes, n_dim) of every sample of a fixed-size positions-only model; None for variable-size samples."""
        return None

    def initialize(self, first_batch: dict[str, Tensor], train_data: dict[str, Tensor] | None = None) -> None:
        """Data-dependent initialisation before the first training step (none by default)."""

    def clip_parameters(self) -> list[nn.Parameter]:
        """The parameters whose gradient norm training clips and logs (all by default)."""
        return list(self.parameters())

    @property
    def last_nfe(self) -> int:
        """Function evaluations of the CNF's last solve (the mean over groups when `nll` solved in groups)."""
        return int(self.cnf.last_nfe)

    @torch.no_grad()
    def decode_with_log_prob(self, z: Tensor, mask: Tensor | None = None,
                             trace: str | None = None) -> tuple[Tensor, Tensor]:
        """Reverse-solve latents z (t = 1) to the continuous state x (t = 0) with log q(x) from the same solve."""
        x, log_det = self.cnf.decode_with_logdet(z, mask, trace=trace)
        return x, self.base_log_prob(z, mask) + log_det
