"""The QM9 density model: p(M) times a dequantised continuous flow over positions and atom features.

    -log p(x, h, M) <= -(log p_base(z) + log|det dz/d[x, v]| - log q(v | x, h) + log p(M))

with v the dequantised features (argmax partition for the atom type, sigmoid offset for the atomic number),
[x, v] normalised by ActNorm and carried from t = 0 to the latent z at t = 1 by the CNF, and the base density
a Gaussian on the (M - 1) * n_dim dimensional zero-centre-of-mass subspace for positions times a standard
Gaussian on the M * F features. Molecules of different sizes share a batch through masks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from enf.errors import EnfError, NumericalError
from enf.geometry import remove_mean
from enf.models.flows.actnorm import ActNorm
from enf.models.flows.base import DensityModel
from enf.models.flows.cnf import CNF
from enf.models.flows.dequantize import ArgmaxVariationalDequantizer
from enf.models.flows.distributions import (
    com_free_gaussian_log_prob,
    gaussian_log_prob,
    sample_com_free_gaussian,
    sample_gaussian,
)

#: Added to p(M) before the logarithm, as the authors did, so that an unseen size costs 69 nats, not infinity.
SIZE_PROB_FLOOR = 1e-30


class MoleculeFlow(DensityModel):
    """-log p(x, h, M) for molecules (positions, one-hot atom types, atomic numbers) and sampling from it.

    Submodules: `dequantizer` (argmax + variational, with its EGNN q-network), `actnorm` (or None) and `cnf`.
    Buffer `size_probs` (max_nodes + 1,) holds p(M), fitted to the training split's histogram.
    """

    def __init__(self, cnf: CNF, max_nodes: int, n_dim: int = 3, n_categories: int = 5,
                 dequantizer_nf: int = 64, dequantizer_layers: int = 4, actnorm: bool = True,
                 actnorm_position_logdet: str = "all", sample_batch_size: int = 128,
                 group_size: int | None = 8) -> None:
        super().__init__()
        self.cnf = cnf
        self.max_nodes = max_nodes
        self.n_dim = n_dim
        self.n_categories = n_categories
        self.n_features = n_categories + 1
        if cnf.field.n_features != self.n_features:
            raise EnfError(f"the vector field models {cnf.field.n_features} node features; molecules with "
                           f"{n_categories} atom types need {self.n_features}")
        self.dequantizer = ArgmaxVariationalDequantizer(n_categories, dequantizer_nf, dequantizer_layers)
        self.actnorm = ActNorm(n_dim, self.n_features, actnorm_position_logdet) if actnorm else None
        self.sample_batch_size = sample_batch_size
        self.group_size = group_size
        self.register_buffer("size_probs", torch.zeros(max_nodes + 1))

    # -- p(M) ----------------------------------------------------------------------------------------
    def set_size_distribution(self, counts: Tensor) -> None:
        """Set p(M) from a histogram of molecule sizes (counts indexed by M = 0 .. max_nodes)."""
        counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
        if counts.numel() > self.max_nodes + 1 and counts[self.max_nodes + 1:].sum() > 0:
            raise EnfError(f"size histogram has molecules above {self.max_nodes} atoms")
        counts = counts[: self.max_nodes + 1]
        if (counts < 0).any() or counts.sum() <= 0 or counts[0] > 0:
            raise EnfError("size histogram must be non-negative, non-empty and have no molecules of 0 atoms")
        probs = torch.zeros(self.max_nodes + 1, dtype=torch.float64)
        probs[: counts.numel()] = counts / counts.sum()
        self.size_probs.copy_(probs.to(self.size_probs))

    def log_size_prob(self, n_atoms: Tensor) -> Tensor:
        """log p(M) for sizes (B,) (integers stored in any dtype)."""
        if not float(self.size_probs.sum()) > 0:
            raise EnfError("p(M) is not set: call initialize(first_batch, train_data) or load a checkpoint")
        idx = n_atoms.round().long().clamp(0, self.max_nodes)
        return torch.log(self.size_probs[idx] + SIZE_PROB_FLOOR)

    # -- training hooks ------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, first_batch: dict[str, Tensor], train_data: dict[str, Tensor] | None = None) -> None:
        """Fit p(M) to the training split's sizes and ActNorm to the first (dequantised) training batch."""
        sizes = (train_data or first_batch)["mask"].sum(1).round().long()
        self.set_size_distribution(torch.bincount(sizes.cpu(), minlength=self.max_nodes + 1))
        if self.actnorm is not None:
            mask = first_batch["mask"]
            x = remove_mean(first_batch["positions"], mask)
            v, _ = self.dequantizer(x, first_batch["one_hot"], first_batch["charges"], mask)
            self.actnorm.initialize(torch.cat([x, v], dim=-1), mask)

    def clip_parameters(self) -> list[nn.Parameter]:
        """The parameters that adaptive gradient clipping watches: ActNorm and the CNF, not the q-network."""
        params = list(self.cnf.parameters())
        if self.actnorm is not None:
            params = list(self.actnorm.parameters()) + params
        return params

    # -- likelihood ----------------------------------------------------------------------------------
    def nll(self, batch: dict[str, Tensor], trace: str | None = None,
            eps: Tensor | None = None) -> dict[str, Tensor]:
        """Per-molecule NLL bound (B,) in nats with its parts, and the CNF regulariser (B,).

        A batch larger than `group_size` is sorted by molecule size and solved in groups of that many
        molecules, each padded only to its own largest molecule: a dense EGNN's cost grows with the padded
        width squared, so this roughly halves the work on QM9. Each molecule's value does not depend on
        its batch (up to the solver's tolerance), so grouping changes the cost, not the estimator.
        `eps` (B, N, F) fixes the dequantiser's noise (tests). `cnf.last_nfe` becomes the groups' mean.
        """
        mask = batch["mask"]
        n = mask.shape[0]
        if not self.group_size or n <= self.group_size:
            return self._nll_group(batch, trace, eps)
        order = torch.argsort(mask.sum(1), stable=True)
        parts: list[dict[str, Tensor]] = []
        nfes: list[int] = []
        for start in range(0, n, self.group_size):
            idx = order[start:start + self.group_size]
            sub = {k: v[idx] for k, v in batch.items() if isinstance(v, Tensor) and v.shape[:1] == (n,)}
            parts.append(self._nll_group(sub, trace, eps[idx] if eps is not None else None))
            nfes.append(self.cnf.last_nfe)
        inverse = torch.argsort(order)
        self.cnf.last_nfe = round(sum(nfes) / len(nfes))
        return {k: torch.cat([p[k] for p in parts])[inverse] for k in parts[0]}

    def _preprocess(self, batch: dict[str, Tensor],
                    eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """The CNF's t = 0 state of a batch: (xh, mask, log q(v | x, h), ActNorm's log-det, kept columns).

        Padding columns that no molecule uses are dropped first (as the authors' collate does), which changes
        nothing but the cost; `cols` are the kept columns (None when all are used).
        """
        mask = batch["mask"]
        used = mask.bool().any(0)
        cols = used.nonzero().squeeze(1) if not bool(used.all()) else None
        pos, one_hot, charges = batch["positions"], batch["one_hot"], batch["charges"]
        if cols is not None:
            mask, pos, one_hot, charges = mask[:, cols], pos[:, cols], one_hot[:, cols], charges[:, cols]
            eps = eps[:, cols] if eps is not None else None
        x = remove_mean(pos, mask)
        v, log_q = self.dequantizer(x, one_hot, charges, mask, eps=eps)
        xh = torch.cat([x, v], dim=-1)
        log_det = xh.new_zeros(xh.shape[0])
        if self.actnorm is not None:
            xh, log_det = self.actnorm(xh, mask)
        return xh, mask, log_q, log_det, cols

    @torch.no_grad()
    def continuous_state(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, int]:
        """Centred positions and dequantised features after ActNorm, exactly what the CNF sees in `nll` (unused
        padding columns dropped). The dequantiser and ActNorm get no gradient through this state."""
        xh, mask, _, _, _ = self._preprocess(batch)
        return xh, mask, int(self.n_dim)

    def base_log_prob(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Zero-centre-of-mass Gaussian on the positions times a standard Gaussian on the features."""
        return com_free_gaussian_log_prob(z[..., : self.n_dim], mask) + gaussian_log_prob(z[..., self.n_dim:], mask)

    def _nll_group(self, batch: dict[str, Tensor], trace: str | None,
                   eps: Tensor | None) -> dict[str, Tensor]:
        """`nll` for one solve."""
        width = batch["mask"].shape[1]
        xh, mask, log_q, log_det, cols = self._preprocess(batch, eps)
        z, ode_log_det, reg = self.cnf(xh, mask, trace=trace)
        log_pz = self.base_log_prob(z, mask)
        log_pm = self.log_size_prob(mask.sum(1))
        delta_logp = log_det + ode_log_det
        nll = -(log_pz + delta_logp - log_q + log_pm)
        if cols is not None:
            full = z.new_zeros(z.shape[0], width, z.shape[2])
            full[:, cols] = z
            z = full
        return {"nll": nll, "reg": reg, "log_pz": log_pz, "delta_logp": delta_logp, "log_q": log_q,
                "log_pM": log_pm, "z": z}

    # -- sampling ------------------------------------------------------------------------------------
    def _reverse(self, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Reverse-solve z -> [x, v]; a molecule whose solve gives NaN/inf (or breaks the solver) is failed.

        A failing batch is split in halves and re-solved, so one bad molecule never takes its batch with it.
        """
        m = mask[..., None].bool()
        try:
            xh = self.cnf.decode(z, mask)
            if self.actnorm is not None:
                xh = self.actnorm.reverse(xh, mask)
            ok = torch.where(m, xh, 0).isfinite().flatten(1).all(1)
        except NumericalError:
            xh, ok = None, torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
        if xh is not None and bool(ok.all()):
            return xh, ~ok
        if z.shape[0] == 1:
            return torch.zeros_like(z), torch.ones(1, dtype=torch.bool, device=z.device)
        half = z.shape[0] // 2
        first, bad_first = self._reverse(z[:half], mask[:half])
        second, bad_second = self._reverse(z[half:], mask[half:])
        return torch.cat([first, second]), torch.cat([bad_first, bad_second])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draw n molecules: M ~ p(M), base noise, reverse solve, ActNorm inverse, argmax/floor decoding.

        Molecules are sorted by size and solved in batches of `sample_batch_size` (each padded to its largest
        molecule); outputs come back in draw order, padded to `max_nodes`. Failed solves are flagged in
        `failed` and have zero positions and features (their size is kept).
        """
        if not float(self.size_probs.sum()) > 0:
            raise EnfError("p(M) is not set: call initialize(first_batch, train_data) or load a checkpoint")
        p = next(self.parameters())
        dtype, device = p.dtype, p.device
        sizes = torch.multinomial(self.size_probs.double().cpu(), n, replacement=True, generator=generator)
        out = {
            "positions": torch.zeros(n, self.max_nodes, self.n_dim, dtype=dtype),
            "atom_mask": torch.zeros(n, self.max_nodes, dtype=torch.bool),
            "one_hot": torch.zeros(n, self.max_nodes, self.n_categories, dtype=torch.bool),
            "charges": torch.zeros(n, self.max_nodes, dtype=torch.int64),
            "num_atoms": sizes.clone(),
            "failed": torch.zeros(n, dtype=torch.bool),
        }
        order = torch.argsort(sizes, stable=True)
        for start in range(0, n, self.sample_batch_size):
            idx = order[start:start + self.sample_batch_size]
            width = int(sizes[idx].max())
            mask = (torch.arange(width)[None, :] < sizes[idx][:, None]).to(dtype)
            shape = (idx.numel(), width)
            z_x = sample_com_free_gaussian((*shape, self.n_dim), mask, generator=generator, dtype=dtype)
            z_h = sample_gaussian((*shape, self.n_features), mask, generator=generator, dtype=dtype)
            mask_d = mask.to(device)
            xh, failed = self._reverse(torch.cat([z_x, z_h], dim=-1).to(device), mask_d)
            xh = torch.where(mask_d[..., None].bool(), xh, 0)
            one_hot, charges = self.dequantizer.decode(xh[..., self.n_dim:], mask_d)
            keep = (~failed).to(dtype)[:, None]
            out["positions"][idx, :width] = (xh[..., : self.n_dim] * keep[..., None]).cpu()
            out["atom_mask"][idx, :width] = mask.bool()
            out["one_hot"][idx, :width] = (one_hot * keep[..., None]).bool().cpu()
            out["charges"][idx, :width] = (charges * keep).long().cpu()
            out["failed"][idx] = failed.cpu()
        return out


def build_molecule_flow(cfg: dict[str, Any], spec: Any, cnf: CNF) -> MoleculeFlow:
    """The QM9 model of `cfg` around `cnf`, with the q-network, ActNorm and grouping of `cfg['model']`."""
    model = cfg["model"]
    return MoleculeFlow(
        cnf, spec.n_nodes, spec.n_dim, spec.n_features - 1,
        dequantizer_nf=int(model["dequantizer_nf"]),
        dequantizer_layers=int(model["dequantizer_layers"]),
        actnorm=bool(model["actnorm"]),
        actnorm_position_logdet=str(model["actnorm_position_logdet"]),
        group_size=int(model["group_size"]) or None,
    )
