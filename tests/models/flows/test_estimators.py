"""The divergence estimator is bound once per solve (`AugmentedDynamics.bind`), chosen by size and graph mode, and
whichever is bound gives the velocity, divergence and regulariser of each sample's full Jacobian."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from enf.geometry import remove_mean
from enf.models.flows import cnf as cnf_module
from enf.models.flows.cnf import (
    CNF,
    EXACT_FUSED_MAX_DIM,
    EXACT_VMAP_MAX_ELEMENTS,
    AugmentedDynamics,
    select_estimator,
)
from enf.models.networks.base import VectorField
from enf.models.networks.egnn import EGNNDynamics


def brute_force(dyn: AugmentedDynamics, trace: str, regularize: bool, noise: Tensor, t: Tensor,
                x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Velocity, divergence and regulariser from each sample's full Jacobian (torch.func.jacrev): the reference."""
    def one(xs: Tensor) -> Tensor:
        return dyn.field(t, xs[None], None)[0]

    jac = torch.vmap(torch.func.jacrev(one))(x).flatten(3).flatten(1, 2)  # (B, N*D, N*D)
    dxh, e = dyn.field(t, x, None), noise.flatten(1)
    if dyn.field.closed_form_divergence:
        div = dyn.field.divergence(t, x, None)
    elif trace == "exact":
        div = torch.diagonal(jac, dim1=1, dim2=2).sum(1)
    else:
        div = torch.einsum("bi,bij,bj->b", e, jac, e)
    frob = torch.einsum("bi,bij->bj", e, jac).pow(2).sum(1)
    reg = dxh.pow(2).flatten(1).sum(1) + frob if regularize else torch.zeros_like(div)
    return dxh, div, reg


class Contraction(VectorField):
    """dx/dt = -x with its closed-form divergence."""

    closed_form_divergence = True

    def __init__(self, n_dim: int) -> None:
        super().__init__()
        self.n_dim = n_dim
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        return -self.scale * remove_mean(xh)

    def divergence(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        return -self.scale * (xh.shape[1] - 1) * xh.shape[2] * xh.new_ones(xh.shape[0])


SMALL, LARGE = 8, EXACT_VMAP_MAX_ELEMENTS + 1  # states below and above the vmap threshold


@pytest.mark.parametrize(("trace", "closed", "compiled", "graph", "size", "total", "expected"), [
    # compiled fields fuse Hutchinson's term with the field, with or without a graph
    ("hutchinson", False, True, True, 8, LARGE, "fused_hutchinson"),
    ("hutchinson", False, True, False, 8, SMALL, "fused_hutchinson"),
    # compiled exact traces fuse without a graph and up to EXACT_FUSED_MAX_DIM coordinates per sample
    ("exact", False, True, False, EXACT_FUSED_MAX_DIM, LARGE, "fused_exact"),
    ("exact", False, True, False, EXACT_FUSED_MAX_DIM + 1, SMALL, "vmap_exact"),
    ("exact", False, True, False, EXACT_FUSED_MAX_DIM + 1, LARGE, "exact_loop"),
    ("exact", False, True, True, 8, SMALL, "exact_loop"),
    # eager: one vmap-ed pass for small graph-less exact traces, else the loop or one VJP
    ("exact", False, False, False, 8, EXACT_VMAP_MAX_ELEMENTS, "vmap_exact"),
    ("exact", False, False, False, 8, LARGE, "exact_loop"),
    ("exact", False, False, True, 8, SMALL, "exact_loop"),
    ("hutchinson", False, False, False, 8, SMALL, "hutchinson"),
    ("hutchinson", False, False, True, 8, LARGE, "hutchinson"),
    # a closed-form divergence wins over every trace, compiled or not
    ("exact", True, True, False, 8, SMALL, "closed_form"),
    ("hutchinson", True, False, True, 8, LARGE, "closed_form"),
    ("exact", True, False, False, 8, SMALL, "closed_form"),
])
def test_each_estimator_is_selected_where_it_pays(trace: str, closed: bool, compiled: bool, graph: bool,
                                                  size: int, total: int, expected: str) -> None:
    assert select_estimator(trace, closed, compiled, graph, size, total) == expected


@pytest.mark.parametrize("batch", [3, 200])  # DW4-sized states below and above the vmap threshold
def test_a_solve_binds_its_estimators_once(batch: int, monkeypatch) -> None:
    cnf = CNF(EGNNDynamics(2, 0, hidden_nf=8, n_layers=1).double(), trace="exact", rtol=1e-3, atol=1e-3)
    x = remove_mean(torch.randn(batch, 4, 2, dtype=torch.float64))
    view = cnf.dynamics.bind(None, None, "exact", False, x.shape)
    assert view.estimators == {True: "exact_loop",
                               False: "vmap_exact" if x.numel() <= EXACT_VMAP_MAX_ELEMENTS else "exact_loop"}
    calls = {"n": 0}
    original = cnf_module.select_estimator

    def counting(*args: object) -> str:
        calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(cnf_module, "select_estimator", counting)
    with torch.no_grad():
        cnf(x)
    assert calls["n"] == 2 and cnf.last_nfe > 2  # once per graph mode at bind, never per evaluation


FIELDS = {"egnn": lambda: EGNNDynamics(2, 0, hidden_nf=8, n_layers=1).double(), "closed": lambda: Contraction(2)}


@pytest.mark.parametrize(("field", "trace", "regularize", "graph", "batch"), [
    (f, tr, reg, g, b) for f, tr, reg, g, b in itertools.product(FIELDS, ("exact", "hutchinson"), (False, True),
                                                                 (False, True), (3, 200))])
def test_the_bound_estimator_equals_the_full_jacobian(field: str, trace: str, regularize: bool, graph: bool,
                                                       batch: int) -> None:
    torch.manual_seed(0)
    dyn = AugmentedDynamics(FIELDS[field]())
    x = remove_mean(torch.randn(batch, 4, 2, dtype=torch.float64))
    noise = torch.randint(0, 2, x.shape).double() * 2 - 1
    view = dyn.bind(None, noise, trace, regularize, x.shape)
    t = torch.tensor(0.3, dtype=torch.float64)
    with torch.set_grad_enabled(graph):
        xin = x.clone().requires_grad_(graph)
        new = view(t, (xin, None, None))
    # the vmap-ed exact pass of a graph-less solve skips the regulariser: nothing is trained on it
    skips_reg = not graph and view.estimators[False] == "vmap_exact"
    for a, b in zip(new, brute_force(view, trace, regularize and not skips_reg, noise, t, x)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # training back-propagates through velocity and divergence; a graph-less solve keeps no graph at all
    assert [a.requires_grad for a in new] == ([True, True, regularize] if graph else [False] * 3)
