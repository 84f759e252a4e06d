"""The divergence estimator is bound once per solve (`AugmentedDynamics.bind`), and the bound one is the estimator
the size thresholds of the former per-evaluation dispatch picked, with the same numbers."""

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
    exact_divergence,
    exact_trace,
    select_estimator,
)
from enf.models.networks.base import VectorField
from enf.models.networks.egnn import EGNNDynamics


def former_dispatch(trace: str, closed_form: bool, compiled: bool, keep_graph: bool, sample_numel: int,
                    total_numel: int) -> str:
    """The branch order of the former `AugmentedDynamics.forward`, evaluated on every call (the reference)."""
    if compiled and not closed_form:
        if trace == "hutchinson":
            return "fused_hutchinson"
        if not keep_graph and trace == "exact" and sample_numel <= EXACT_FUSED_MAX_DIM:
            return "fused_exact"
    if not keep_graph and trace == "exact" and not closed_form and total_numel <= EXACT_VMAP_MAX_ELEMENTS:
        return "vmap_exact"
    if closed_form:
        return "closed_form"
    return "exact_loop" if trace == "exact" else "hutchinson"


def former_eager_forward(dyn: AugmentedDynamics, t: Tensor, xh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The former eager evaluation (vmap exact, closed form, exact loop, Hutchinson), kept as the reference."""
    keep_graph = torch.is_grad_enabled()
    if (not keep_graph and dyn.trace == "exact" and not dyn.field.closed_form_divergence
            and xh.numel() <= EXACT_VMAP_MAX_ELEMENTS):
        with torch.enable_grad():
            dxh, div = exact_divergence(lambda y: dyn.field(t, y, dyn.mask), xh.detach())
        return dxh, div, torch.zeros_like(div)
    with torch.enable_grad():
        if not keep_graph or not xh.requires_grad:
            xh = xh.detach().requires_grad_(True)
        dxh = dyn.field(t, xh, dyn.mask)
        frob = None
        if dyn.field.closed_form_divergence:
            div = dyn.field.divergence(t, xh, dyn.mask)
        elif dyn.trace == "exact":
            div = exact_trace(dxh, xh, create_graph=keep_graph)
        else:
            e_jac = torch.autograd.grad(dxh, xh, dyn.noise, create_graph=keep_graph)[0]
            div = (e_jac * dyn.noise).flatten(1).sum(1)
            frob = e_jac.pow(2).flatten(1).sum(1) if dyn.regularize else None
        if dyn.regularize:
            if frob is None:
                e_jac = torch.autograd.grad(dxh, xh, dyn.noise, create_graph=keep_graph)[0]
                frob = e_jac.pow(2).flatten(1).sum(1)
            reg = dxh.pow(2).flatten(1).sum(1) + frob
        else:
            reg = torch.zeros_like(div)
    if not keep_graph:
        dxh, div, reg = dxh.detach(), div.detach(), reg.detach()
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


def test_selection_equals_the_former_thresholds() -> None:
    sizes = [1, EXACT_FUSED_MAX_DIM, EXACT_FUSED_MAX_DIM + 1, 261]
    totals = [8, EXACT_VMAP_MAX_ELEMENTS, EXACT_VMAP_MAX_ELEMENTS + 1, 8000]
    for trace, closed, compiled, graph, size, total in itertools.product(
            ("exact", "hutchinson"), (False, True), (False, True), (False, True), sizes, totals):
        assert select_estimator(trace, closed, compiled, graph, size, total) == former_dispatch(
            trace, closed, compiled, graph, size, total)


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
def test_the_bound_estimator_gives_the_former_numbers(field: str, trace: str, regularize: bool, graph: bool,
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
        old = former_eager_forward(view, t, xin)
    for a, b in zip(new, old):
        assert torch.equal(a, b)
        assert a.requires_grad == b.requires_grad
