"""Every model the registry builds is a working density model: trained a few steps, it fits a tiny problem."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from enf.config import resolve
from enf.geometry import remove_mean
from enf.models import build_model

# Small enough to run in a second; the continuous baselines get a looser solver, GNF a smaller network.
TINY: dict[str, tuple[dict[str, Any], float]] = {
    "gnf": ({"model": {"hidden_nf": 16, "n_layers": 1}}, 1e-2),
    "gnf_att": ({"model": {"hidden_nf": 16, "n_layers": 1}}, 1e-2),
    "gnf_att_aug": ({"model": {"hidden_nf": 16, "n_layers": 1}}, 1e-2),
    "simple_dynamics": ({"flow": {"rtol": 1e-4, "atol": 1e-6}}, 2e-2),
    "kernel_dynamics": ({"flow": {"rtol": 1e-4, "atol": 1e-6}}, 2e-2),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_loss_decreases_on_a_tiny_problem(name: str) -> None:
    sets, lr = TINY[name]
    torch.manual_seed(0)
    model = build_model(resolve("dw4", name, sets=sets))
    x = remove_mean(torch.randn(8, 4, 2) * 2.5)  # wider than the base: the flow must learn to expand

    def nll() -> float:
        with torch.no_grad():
            return float(model.nll({"positions": x}, trace="exact")["nll"].mean())

    before = nll()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(10):
        opt.zero_grad()
        model.nll({"positions": x})["nll"].mean().backward()
        opt.step()
    assert nll() < before - 0.5, (before, nll())
