"""The CNF: exact and Hutchinson traces, invertibility, likelihood invariance, normalisation, closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from enf.geometry import random_orthogonal, remove_mean
from enf.models.flows.cnf import CNF, exact_divergence, exact_trace
from enf.models.flows.particles import ParticleFlow
from enf.models.networks.base import VectorField
from enf.models.networks.egnn import EGNNDynamics


def _egnn(n_dim: int, seed: int = 0, hidden_nf: int = 16, n_layers: int = 2) -> EGNNDynamics:
    torch.manual_seed(seed)
    field = EGNNDynamics(n_dim, 0, hidden_nf=hidden_nf, n_layers=n_layers).double()
    for layer in field.egnn.layers:  # make the flow far from the identity
        layer.coord_mlp[2].weight.data.normal_(0, 0.3)
    return field


def _flow(n_particles: int, n_dim: int, tol: float = 1e-9, trace: str = "exact") -> ParticleFlow:
    cnf = CNF(_egnn(n_dim), rtol=tol, atol=tol, trace=trace)
    return ParticleFlow(cnf, n_particles, n_dim).double()


class Linear(VectorField):
    """dx/dt = -x: the Jacobian is -I, so log det over the (N-1) D subspace is exactly -(N-1) D."""

    def __init__(self, n_dim: int) -> None:
        super().__init__()
        self.n_dim = n_dim

    def forward(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        return -remove_mean(xh)


def test_closed_form_log_det_of_contraction() -> None:
    cnf = CNF(Linear(3), rtol=1e-10, atol=1e-10, trace="exact")
    x = remove_mean(torch.randn(4, 5, 3, dtype=torch.float64))
    z, log_det, _ = cnf(x)
    assert torch.allclose(z, x * math.exp(-1), atol=1e-8)
    # the full-space trace of the projected field is -(N-1) D: the mean direction is projected out
    assert torch.allclose(log_det, torch.full((4,), -4.0 * 3, dtype=torch.float64), atol=1e-8)


def test_exact_trace_matches_brute_force_jacobian() -> None:
    field = _egnn(3)
    x = torch.randn(3, 6, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.4, dtype=torch.float64)
    out = field(t, x)
    tr = exact_trace(out, x, create_graph=False)
    vel, tr_vmap = exact_divergence(lambda y: field(t, y), x.detach())  # the small-state path of evaluation
    assert torch.allclose(vel, out) and not tr_vmap.requires_grad
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda y: field(t, y[None])[0], x[b].detach())
        assert torch.allclose(tr[b], jac.reshape(18, 18).trace(), atol=1e-10)
        assert torch.allclose(tr_vmap[b], jac.reshape(18, 18).trace(), atol=1e-10)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise: str) -> None:
    torch.manual_seed(1)
    field = _egnn(2)
    x = torch.randn(1, 4, 2, dtype=torch.float64).expand(2000, 4, 2).clone()
    cnf = CNF(field, rtol=1e-5, atol=1e-5, trace="hutchinson", noise=noise)
    with torch.no_grad():
        _, est, _ = cnf(x)
        _, exact, _ = cnf(x[:1], trace="exact")
    sem = est.std() / math.sqrt(est.numel())
    assert abs(float(est.mean() - exact[0])) < 4 * float(sem) + 1e-9
    assert est.std() > 0  # it really is a noisy estimate


def test_encode_then_decode_returns_the_input() -> None:
    flow = _flow(4, 2, tol=1e-9)
    x = remove_mean(torch.randn(6, 4, 2, dtype=torch.float64) * 2)
    with torch.no_grad():
        z, _, _ = flow.cnf(x)
        x_back = flow.cnf.decode(z)
    assert (z - x).abs().max() > 1e-2  # the flow moved the points
    assert torch.allclose(x_back, x, atol=1e-4)


@pytest.mark.parametrize("n_particles,n_dim", [(4, 2), (5, 3)])
def test_log_likelihood_is_invariant(n_particles: int, n_dim: int) -> None:
    flow = _flow(n_particles, n_dim, tol=1e-7)
    x = remove_mean(torch.randn(2, n_particles, n_dim, dtype=torch.float64) * 2)
    with torch.no_grad():
        base = flow.nll({"positions": x}, trace="exact")["nll"]
        q = random_orthogonal(1, n_dim, reflections=True, dtype=torch.float64)[0]
        if torch.det(q) > 0:
            q[:, 0] = -q[:, 0]
        for moved in (x @ q.T, x + 3.0, x[:, torch.randperm(n_particles)],
                      x @ random_orthogonal(1, n_dim, dtype=torch.float64)[0].T):
            assert torch.allclose(flow.nll({"positions": moved}, trace="exact")["nll"], base, atol=1e-5)


def test_base_density_is_normalised_on_the_subspace() -> None:
    from enf.models.flows.distributions import com_free_gaussian_log_prob

    # N = 3 points in 1D: the zero-mean subspace is a plane; integrate over an orthonormal basis of it.
    basis = torch.linalg.qr(torch.tensor([[1.0, 0], [-1, 1], [0, -1]], dtype=torch.float64))[0]  # (3, 2)
    grid = torch.linspace(-8, 8, 401, dtype=torch.float64)
    u, v = torch.meshgrid(grid, grid, indexing="ij")
    coords = torch.stack([u, v], -1).reshape(-1, 2) @ basis.T  # (G, 3) points with zero mean
    density = com_free_gaussian_log_prob(coords[..., None]).exp()
    step = float(grid[1] - grid[0])
    assert abs(float(density.sum()) * step**2 - 1.0) < 1e-6


def test_flow_density_is_normalised() -> None:
    # Two particles in 1D: the subspace is the line u -> (u, -u)/sqrt(2); the flow's density on it
    # must integrate to one, which checks the base normaliser and the trace on the subspace together.
    flow = _flow(2, 1, tol=1e-8)
    u = torch.linspace(-10, 10, 801, dtype=torch.float64)
    x = torch.stack([u, -u], -1)[..., None] / math.sqrt(2)
    with torch.no_grad():
        nll = flow.nll({"positions": x}, trace="exact")["nll"]
    mass = float((-nll).exp().sum() * (u[1] - u[0]))
    assert abs(mass - 1.0) < 1e-3  # a missing normaliser would be off by sqrt(2 pi)


def test_sampling_returns_finite_centred_samples() -> None:
    flow = _flow(4, 2, tol=1e-5)
    out = flow.sample(8, generator=torch.Generator().manual_seed(0))
    assert out["positions"].shape == (8, 4, 2)
    assert not out["failed"].any()
    assert out["positions"].mean(1).abs().max() < 1e-8


def test_nfe_is_counted() -> None:
    flow = _flow(4, 2, tol=1e-5)
    with torch.no_grad():
        flow.nll({"positions": remove_mean(torch.randn(2, 4, 2, dtype=torch.float64))})
    assert flow.cnf.last_nfe >= 8


class Exploding(VectorField):
    """A field that returns NaN: the adaptive solver's step size collapses."""

    def __init__(self) -> None:
        super().__init__()
        self.n_dim = 2

    def forward(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        return xh * float("nan")


def test_a_diverging_solve_raises_a_numerical_error() -> None:
    from enf.errors import NumericalError

    cnf = CNF(Exploding(), trace="exact")
    with pytest.raises(NumericalError, match="underflow"):
        cnf(torch.randn(2, 3, 2, dtype=torch.float64))
    stiff = CNF(_egnn(2), rtol=1e-12, atol=1e-12, options={"max_num_steps": 2})
    with pytest.raises(NumericalError, match="exploded"):
        stiff(remove_mean(torch.randn(2, 4, 2, dtype=torch.float64)))


def test_adjoint_and_direct_gradients_agree() -> None:
    x = remove_mean(torch.randn(3, 4, 2, dtype=torch.float64))
    grads = []
    for adjoint in (False, True):
        field = _egnn(2, seed=3, hidden_nf=8, n_layers=1)
        cnf = CNF(field, rtol=1e-7, atol=1e-7, trace="exact", adjoint=adjoint, regularization=1.0)
        torch.manual_seed(0)  # the same Frobenius probe in both runs
        z, log_det, reg = cnf(x)
        (z.pow(2).sum() + log_det.sum() + reg.sum()).backward()
        grads.append(torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten()
                                for p in field.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_adjoint_sees_each_solves_own_mask_and_probe() -> None:
    """Several solves (different masks and sizes, as in grouped QM9 batches) before one backward pass: the
    adjoint must replay each solve with its own mask and Hutchinson probe, and agree with direct backprop."""
    xs = [remove_mean(torch.randn(2, 5, 3, dtype=torch.float64)), remove_mean(torch.randn(3, 4, 3,
                                                                                          dtype=torch.float64))]
    masks = [torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.float64), None]
    xs[0] = xs[0] * masks[0][..., None]
    grads = []
    for adjoint in (False, True):
        field = _egnn(3, seed=5, hidden_nf=8, n_layers=1)
        cnf = CNF(field, rtol=1e-7, atol=1e-7, trace="hutchinson", adjoint=adjoint)
        torch.manual_seed(1)  # the same probes in both runs
        loss = sum(cnf(x, m)[1].sum() + cnf(x, m)[0].pow(2).sum() for x, m in zip(xs, masks))
        loss.backward()
        grads.append(torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten()
                                for p in field.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)  # solver tolerance


def test_decode_with_logdet_matches_the_encoding_log_det() -> None:
    flow = _flow(4, 2, tol=1e-9)
    z = remove_mean(torch.randn(5, 4, 2, dtype=torch.float64))
    x, log_det_rev = flow.cnf.decode_with_logdet(z, trace="exact")
    with torch.no_grad():
        z_back, log_det_fwd, _ = flow.cnf(x, trace="exact")
    assert torch.allclose(z_back, z, atol=1e-5)
    assert torch.allclose(log_det_rev, log_det_fwd, atol=1e-5)


@pytest.mark.slow
def test_compiled_paths_match_eager() -> None:
    """flow.compile: the fused Hutchinson training evaluation (loss and gradients, by direct back-propagation and
    by the adjoint) and the fused exact and Hutchinson traces of evaluation give what the eager code gives."""
    x = remove_mean(torch.randn(6, 4, 2))
    results = []
    for compile in (False, True):
        torch.manual_seed(0)
        field = EGNNDynamics(2, 0, hidden_nf=8, n_layers=1)
        cnf = CNF(field, rtol=1e-5, atol=1e-5, trace="hutchinson", compile=compile)
        out: list[torch.Tensor] = []
        for adjoint in (False, True):
            cnf.adjoint = adjoint
            field.zero_grad()
            torch.manual_seed(1)
            z, log_det, _ = cnf(x)
            (z.pow(2).sum() - log_det.sum()).backward()
            out += [log_det.detach(), torch.cat([p.grad.flatten() for p in field.parameters() if p.grad is not None])]
        with torch.no_grad():
            _, exact, _ = cnf(x, trace="exact")
            torch.manual_seed(2)
            _, hutchinson, _ = cnf(x, trace="hutchinson")
        results.append((*out, exact, hutchinson))
    for eager, compiled in zip(*results):
        assert torch.allclose(eager, compiled, rtol=1e-3, atol=1e-4)
