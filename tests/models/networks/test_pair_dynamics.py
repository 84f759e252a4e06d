"""Simple and kernel dynamics: exact divergence, E(n) and permutation equivariance, the authors' RBF settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_particle_data

from enf.config import resolve
from enf.errors import EnfError
from enf.geometry import random_orthogonal, remove_mean
from enf.models import VECTOR_FIELDS
from enf.models.flows.cnf import CNF, exact_trace
from enf.models.flows.particles import ParticleFlow
from enf.models.networks.pair_dynamics import KernelDynamics, SimpleDynamics, kernel_rbf_settings
from enf.training import train

torch.manual_seed(0)
F64 = torch.float64


def _kernel(n_dim: int, variant: str = "standard") -> KernelDynamics:
    field = KernelDynamics(n_dim, variant=variant).double()
    with torch.no_grad():  # move away from the initial (zero) importance and bias, so every term is tested
        field.importance.normal_(0, 0.3)
        field.bias.normal_(0, 0.3)
        field.neg_log_widths.add_(torch.randn_like(field.neg_log_widths) * 0.1)
    return field


def _simple(n_dim: int) -> SimpleDynamics:
    return SimpleDynamics(n_dim).double()


def _reflection(n_dim: int) -> torch.Tensor:
    q = random_orthogonal(1, n_dim, reflections=True, dtype=F64)[0]
    if torch.det(q) > 0:
        q[:, 0] = -q[:, 0]
    return q


def _mask(batch: int, n: int) -> torch.Tensor:
    mask = torch.ones(batch, n, dtype=F64)
    mask[0, n - 2:] = 0
    mask[-1, n // 2:] = 0
    return mask


@pytest.mark.parametrize("variant", ["standard", "lj13"])
@pytest.mark.parametrize("n_dim,n_nodes", [(2, 4), (3, 13)])
def test_kernel_divergence_equals_autograd_trace(variant: str, n_dim: int, n_nodes: int) -> None:
    field = _kernel(n_dim, variant)
    x = (torch.randn(3, n_nodes, n_dim, dtype=F64) * 1.5).requires_grad_(True)
    for t in (0.0, 0.23, 1.0):
        tt = torch.tensor(t, dtype=F64)
        closed = field.divergence(tt, x)
        auto = exact_trace(field(tt, x), x, create_graph=False)
        assert torch.allclose(closed, auto, atol=1e-10, rtol=1e-10)
        assert closed.abs().max() > 1e-3
    mask = _mask(3, n_nodes)
    out = field(tt, x, mask)
    assert torch.allclose(field.divergence(tt, x, mask), exact_trace(out, x, create_graph=False), atol=1e-10)


def test_kernel_divergence_gradients_match_autograd() -> None:
    # the closed form is differentiated in training: its parameter gradients must equal those of the true trace
    field = _kernel(3, "lj13")
    x = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    t = torch.tensor(0.6, dtype=F64)
    g_closed = torch.autograd.grad(field.divergence(t, x).sum(), list(field.parameters()))
    g_auto = torch.autograd.grad(exact_trace(field(t, x), x, create_graph=True).sum(), list(field.parameters()))
    for a, b in zip(g_closed, g_auto):
        assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("kind", ["simple", "kernel"])
@pytest.mark.parametrize("n_dim,n_nodes", [(2, 4), (3, 13)])
def test_equivariant_to_orthogonal_maps_translations_and_permutations(kind: str, n_dim: int,
                                                                      n_nodes: int) -> None:
    field = _simple(n_dim) if kind == "simple" else _kernel(n_dim)
    x = torch.randn(4, n_nodes, n_dim, dtype=F64) * 2
    t = torch.tensor(0.41, dtype=F64)
    v = field(t, x)
    q = _reflection(n_dim)
    shift = torch.randn(1, 1, n_dim, dtype=F64) * 5
    assert torch.allclose(field(t, x @ q.T + shift), v @ q.T, atol=1e-6, rtol=0)
    rot = random_orthogonal(1, n_dim, dtype=F64)[0]
    assert torch.allclose(field(t, x @ rot.T), v @ rot.T, atol=1e-6, rtol=0)
    perm = torch.randperm(n_nodes)
    assert torch.allclose(field(t, x[:, perm]), v[:, perm], atol=1e-6, rtol=0)
    assert v.mean(dim=1).abs().max() < 1e-12
    assert v.abs().max() > 1e-3
    if kind == "kernel":
        div = field.divergence(t, x)
        for moved in (x @ q.T + shift, x[:, perm]):
            assert torch.allclose(field.divergence(t, moved), div, atol=1e-8)


@pytest.mark.parametrize("kind", ["simple", "kernel"])
def test_masked_nodes_are_zero_and_padding_does_not_matter(kind: str) -> None:
    field = _simple(3) if kind == "simple" else _kernel(3)
    t = torch.tensor(0.5, dtype=F64)
    x = remove_mean(torch.randn(1, 6, 3, dtype=F64) * 2)
    alone = field(t, x)
    padded = torch.cat([x, torch.randn(1, 3, 3, dtype=F64) * 4], 1)  # garbage in the padded slots
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], 1).double()
    out = field(t, padded, mask)
    assert torch.allclose(out[:, :6], alone, atol=1e-12)
    assert out[:, 6:].abs().max() == 0
    if kind == "kernel":
        assert torch.allclose(field.divergence(t, padded, mask), field.divergence(t, x), atol=1e-10)


def test_simple_dynamics_is_a_time_free_gradient_field() -> None:
    field = _simple(3)
    x = torch.randn(1, 5, 3, dtype=F64)
    v0 = field(torch.tensor(0.0, dtype=F64), x)
    assert torch.equal(v0, field(torch.tensor(0.9, dtype=F64), x))
    # v = -grad U: its Jacobian is minus the Hessian of U, hence symmetric
    jac = torch.autograd.functional.jacobian(lambda y: field(torch.tensor(0.0, dtype=F64), y[None])[0], x[0])
    jac = jac.reshape(15, 15)
    assert torch.allclose(jac, jac.T, atol=1e-10)
    # and it is the negative gradient of the potential it reports, by finite differences
    u = lambda y: field.potential(y).sum()  # noqa: E731
    eps = 1e-6
    e = torch.zeros_like(x)
    e[0, 2, 1] = eps
    fd = (u(x + e) - u(x - e)) / (2 * eps)
    assert abs(float((fd + v0[0, 2, 1]).detach())) < 1e-6


def test_simple_dynamics_works_without_grad_and_keeps_the_graph_with_it() -> None:
    field = _simple(2)
    x = torch.randn(3, 4, 2, dtype=F64)
    t = torch.tensor(0.0, dtype=F64)
    with torch.no_grad():
        v = field(t, x)
    assert not v.requires_grad
    y = x.clone().requires_grad_(True)
    w = field(t, y)
    assert torch.allclose(v, w)
    tr = exact_trace(w, y, create_graph=True)  # second derivatives exist (the CNF's trace needs them)
    tr.sum().backward()
    dead = field.mlp[-1].bias  # a constant shift of U moves nothing (the authors' MLP has it too)
    assert dead.grad is None
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in field.parameters() if p is not dead)


def test_kernel_rbf_settings_follow_the_authors() -> None:
    std = kernel_rbf_settings("standard")
    assert torch.allclose(std["mus"], torch.linspace(0, 8, 50))
    assert torch.allclose(std["widths"], torch.full((50,), 0.5))
    assert torch.allclose(std["widths_time"], torch.full((10,), 0.3))
    lj = kernel_rbf_settings("lj13")
    m = torch.linspace(0, 16, 50, dtype=F64)
    expected = ((m - 1.5) ** 2 / 32).sort().values
    assert torch.allclose(lj["mus"].double(), expected, atol=1e-6)
    assert 0 <= lj["mus"][0] < 1e-3 and lj["mus"][-1] == pytest.approx(14.5**2 / 32, abs=1e-5)  # 0 to 6.57
    assert torch.allclose(lj["widths"].double(), 0.3 + 48 * ((expected - 1.5) / 32) ** 2, atol=1e-6)
    assert float(lj["widths"].min()) == pytest.approx(0.3, abs=2e-3)
    assert float(lj["widths"].max()) == pytest.approx(1.505, abs=2e-3)
    tw = lj["widths_time"]
    assert float(tw.min()) == pytest.approx(0.3 / 10 ** 0.5, abs=2e-3)    # 0.095 at t = 0.5
    assert float(tw.max()) == pytest.approx(0.425 / 10 ** 0.5, abs=1e-4)  # 0.134 at t = 0 and 1
    with pytest.raises(EnfError, match="variant"):
        kernel_rbf_settings("dw4")


def test_registered_defaults_follow_the_protocol() -> None:
    dw4 = resolve("dw4", "kernel_dynamics")
    assert dw4["model"]["variant"] == "standard"
    assert dw4["flow"]["rtol"] == 1e-5 and dw4["flow"]["atol"] == 1e-10 and dw4["train"]["lr"] == 1e-3
    assert resolve("lj13", "kernel_dynamics")["model"]["variant"] == "lj13"
    qpos = resolve("qm9_positional", "kernel_dynamics")
    assert qpos["model"]["variant"] == "standard" and qpos["train"]["lr"] == 5e-4
    assert qpos["flow"]["regularization"] == 0.0
    simple = resolve("qm9_positional", "simple_dynamics")
    assert simple["train"]["lr"] == 2e-4 and simple["flow"]["regularization"] == 0.0
    assert simple["flow"]["rtol"] == 1e-4 and resolve("lj13", "simple_dynamics")["train"]["lr"] == 1e-3
    field = VECTOR_FIELDS.get("kernel_dynamics")(3, 0, resolve("lj13", "kernel_dynamics")["model"])
    assert field.closed_form_divergence and sum(p.numel() for p in field.parameters()) == 620


@pytest.mark.parametrize("name", ["simple_dynamics", "kernel_dynamics"])
def test_node_features_are_refused(name: str) -> None:
    cfg = resolve("qm9_positional", name)["model"]
    with pytest.raises(EnfError, match="positions only"):
        VECTOR_FIELDS.get(name)(3, 6, cfg)


# -- flow level: likelihood invariance, the closed form inside the CNF, training through the pipeline ---------

def _particle_flow(field: SimpleDynamics | KernelDynamics, n_particles: int, n_dim: int,
                   tol: float = 1e-5) -> ParticleFlow:
    return ParticleFlow(CNF(field, rtol=tol, atol=tol, trace="exact"), n_particles, n_dim).double()


@pytest.mark.parametrize("kind", ["simple", "kernel"])
@pytest.mark.parametrize("n_particles,n_dim", [(4, 2), (5, 3)])
def test_log_likelihood_is_invariant(kind: str, n_particles: int, n_dim: int) -> None:
    field = _simple(n_dim) if kind == "simple" else _kernel(n_dim)
    # invariance is exact, the adaptive solver is not: at rtol = atol = 1e-5 a moved input's NLL differs by up to
    # 1e-2 (60 random draws); at 1e-8 by at most 3e-9
    flow = _particle_flow(field, n_particles, n_dim, tol=1e-8)
    x = remove_mean(torch.randn(2, n_particles, n_dim, dtype=F64) * 2)
    with torch.no_grad():
        base = flow.nll({"positions": x})["nll"]
        z = flow.nll({"positions": x})["z"]
        assert (z - x).abs().max() > 1e-2  # the flow really moves the points
        rot = random_orthogonal(1, n_dim, dtype=F64)[0]
        for moved in (x @ _reflection(n_dim).T + 3.0, x[:, torch.randperm(n_particles)], x @ rot.T):
            assert torch.allclose(flow.nll({"positions": moved})["nll"], base, atol=1e-6)


def test_closed_form_log_det_equals_the_exact_trace_in_the_cnf() -> None:
    field = _kernel(3, "lj13")
    x = remove_mean(torch.randn(2, 5, 3, dtype=F64) * 1.5)
    cnf = CNF(field, rtol=1e-6, atol=1e-6, trace="exact")
    with torch.no_grad():
        z_closed, det_closed, _ = cnf(x)
        field.closed_form_divergence = False  # the same field, its trace by autograd
        z_auto, det_auto, _ = cnf(x)
    assert det_closed.abs().min() > 1e-2
    assert torch.allclose(z_closed, z_auto, atol=1e-8) and torch.allclose(det_closed, det_auto, atol=1e-7)


@pytest.mark.parametrize("dataset,shape", [("dw4", (4, 2)), ("lj13", (13, 3)), ("qm9_positional", (19, 3))])
@pytest.mark.parametrize("name", ["simple_dynamics", "kernel_dynamics"])
def test_trains_through_the_pipeline_on_every_dataset(name: str, dataset: str, shape: tuple[int, int],
                                                      tmp_path: Path) -> None:
    data = write_particle_data(tmp_path / "data", *shape, {"train": 8, "valid": 4, "test": 4})
    sets: dict = {"train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 8}}
    if name == "simple_dynamics":
        sets["flow"] = {"rtol": 1e-3, "atol": 1e-3}
    elif dataset != "dw4":  # kernel dynamics keeps its own tight tolerances on DW4 only, to stay quick
        sets["flow"] = {"rtol": 1e-4, "atol": 1e-6}
    metrics = train(resolve(dataset, name, 8, sets=sets), data, tmp_path / "run", progress=False)
    assert np.isfinite(metrics["test_nll"]) and metrics["mean_nfe"] > 0
    # the recorded estimator is what ran: kernel dynamics' closed-form divergence, not the configured trace
    assert metrics["test_trace"] == ("closed form" if name == "kernel_dynamics" else resolve(dataset, name)["flow"]
                                     ["trace_eval"])


def test_compile_leaves_gradient_fields_eager() -> None:
    """flow.compile on simple dynamics (a gradient field, which torch.func cannot trace) runs it eagerly, with
    the eager result; kernel dynamics (closed-form divergence) and E-NF are unaffected."""
    x = remove_mean(torch.randn(5, 4, 2))
    torch.manual_seed(0)
    field = SimpleDynamics(2)
    out = []
    for compile in (False, True):
        cnf = CNF(field, rtol=1e-5, atol=1e-5, compile=compile)
        assert not cnf.dynamics.compile
        torch.manual_seed(1)
        z, log_det, _ = cnf(x)
        out.append(log_det)
    assert torch.allclose(out[0], out[1])
