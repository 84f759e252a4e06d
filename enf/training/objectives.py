"""Training objectives: what one optimiser step minimises, chosen once from `cfg['train']['objective']`.

Every objective keeps one contract, `loss(model, batch) -> dict[str, Tensor]`: `"loss"` is the scalar that is
back-propagated; every other entry is a scalar the trainer logs as it is (mean per epoch in history.csv, per
iteration in history_steps.csv, and from there in MLflow) under the column `history_column(key)`. `keys` lists
the entries an objective returns, so that the history files have a column for each.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from enf.errors import EnfError
from enf.models.flows.base import DensityModel
from enf.training.flow_matching import fm_settings, matching_step


def history_column(key: str) -> str:
    """The history column of an objective's entry: `nfe` as it is, the others prefixed `train_`."""
    return key if key == "nfe" else f"train_{key}"


class Objective(ABC):
    """One training objective (module doc): `loss(model, batch)` returns "loss" and the scalars to log."""

    #: Every key `loss` returns ("loss" first).
    keys: tuple[str, ...] = ("loss",)

    @abstractmethod
    def loss(self, model: DensityModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """{"loss": scalar to back-propagate, other keys: detached or not, scalars to log}."""


class Likelihood(Objective):
    """Maximum likelihood: mean NLL of the batch plus `regularization` times the CNF's kinetic/Frobenius term."""

    keys = ("loss", "nll", "reg", "nfe")

    def __init__(self, trace: str, regularization: float = 0.0) -> None:
        self.trace = trace
        self.regularization = float(regularization)

    def loss(self, model: DensityModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = model.nll(batch, trace=self.trace)
        nll = out["nll"].mean()
        reg = out["reg"].mean()
        return {"loss": nll + self.regularization * reg, "nll": nll, "reg": reg,
                "nfe": torch.tensor(model.last_nfe)}


class FlowMatching(Objective):
    """Conditional flow matching of the model's vector field (enf/training/flow_matching.py); no ODE solve (NFE 0)."""

    keys = ("loss", "transport_cost", "pairing_seconds", "nfe")

    def __init__(self, pairing: str = "none", sigma: float = 0.0) -> None:
        self.pairing = pairing
        self.sigma = float(sigma)

    def loss(self, model: DensityModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {**matching_step(model, batch, self.pairing, self.sigma), "nfe": torch.tensor(0)}


#: Every objective class (each of its `keys` has a history column).
OBJECTIVE_CLASSES: tuple[type[Objective], ...] = (Likelihood, FlowMatching)


def build_objective(cfg: dict[str, Any]) -> Objective:
    """The objective of `cfg['train']['objective']` with its settings from the resolved config."""
    name = cfg["train"]["objective"]
    if name == "likelihood":
        return Likelihood(cfg["flow"]["trace_train"], float(cfg["flow"]["regularization"]))
    if name == "flow_matching":
        return FlowMatching(*fm_settings(cfg))
    raise EnfError(f"train.objective must be likelihood or flow_matching, got {name!r}")
