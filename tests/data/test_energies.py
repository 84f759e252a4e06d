"""DW4 and LJ13 energies: hand-computed values, autograd and finite-difference derivatives, exact Laplacians."""

from __future__ import annotations

import pytest
import torch

from enf.data.energies import DoubleWellEnergy, LennardJonesEnergy, make_energy
from enf.errors import EnfError


def _random_cluster(name: str, batch: int, seed: int = 0) -> torch.Tensor:
    """Configurations without overlaps: a jittered grid (LJ13) or spread points (DW4), float64."""
    g = torch.Generator().manual_seed(seed)
    if name == "lj13":
        grid = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)[:13]
        x = grid.expand(batch, -1, -1) * 1.1 + 0.1 * torch.randn(batch, 13, 3, generator=g)
    else:
        x = 3.0 * torch.randn(batch, 4, 2, generator=g)
    return (x - x.mean(1, keepdim=True)).to(torch.float64)


def test_dw4_hand_computed() -> None:
    # Four particles on a line at 0, 5, 10, 15: three pairs at d = 5, two at 10, one at 15.
    x = torch.tensor([[[0.0, 0.0], [5.0, 0.0], [10.0, 0.0], [15.0, 0.0]]], dtype=torch.float64)
    u5 = 0.9 * 1**4 - 4 * 1**2          # -3.1
    u10 = 0.9 * 6**4 - 4 * 6**2         # 1022.4
    u15 = 0.9 * 11**4 - 4 * 11**2       # 12692.9
    assert DoubleWellEnergy().energy(x).item() == pytest.approx(3 * u5 + 2 * u10 + u15, rel=1e-12)
    assert 3 * u5 + 2 * u10 + u15 == pytest.approx(14728.4)


def test_lj13_hand_computed_both_conventions() -> None:
    # Particle 1 sits at distance rm = 1 from particle 0; every other pair is 100 apart (LJ ~ 1e-12).
    x = torch.zeros(1, 13, 3, dtype=torch.float64)
    x[0, :, 0] = torch.arange(13, dtype=torch.float64) * 100.0
    x[0, 1, 0] = 1.0
    harmonic = 0.5 * (x[0] - x[0].mean(0)).pow(2).sum().item()
    ordered = make_energy("lj13", "ordered").energy(x).item()
    unique = make_energy("lj13", "unique").energy(x).item()
    assert ordered == pytest.approx(harmonic - 2.0, abs=1e-8)   # the pair at rm counted twice: 2 * (1 - 2)
    assert unique == pytest.approx(harmonic - 1.0, abs=1e-8)


def test_lj13_line_by_separation() -> None:
    # 13 particles spaced 1 apart on a line: 13 - k pairs at separation k; harmonic 0.5 * sum (i - 6)^2 = 91.
    x = torch.zeros(1, 13, 3, dtype=torch.float64)
    x[0, :, 2] = torch.arange(13, dtype=torch.float64)
    lj = sum((13 - k) * (k ** -12.0 - 2 * k ** -6.0) for k in range(1, 13))
    assert make_energy("lj13").energy(x).item() == pytest.approx(2 * lj + 91.0, rel=1e-12)
    assert make_energy("lj13", "unique").energy(x).item() == pytest.approx(lj + 91.0, rel=1e-12)


@pytest.mark.parametrize("name,convention", [("dw4", "ordered"), ("lj13", "ordered"), ("lj13", "unique")])
def test_gradient_and_laplacian_match_autograd(name: str, convention: str) -> None:
    energy = make_energy(name, convention)
    x = _random_cluster(name, 5).requires_grad_(True)
    e = energy.energy(x)
    (grad_auto,) = torch.autograd.grad(e.sum(), x, create_graph=True)
    e2, grad, lap = energy.derivatives(x.detach())
    torch.testing.assert_close(e2, e.detach(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(grad, grad_auto.detach(), rtol=1e-9, atol=1e-9)
    flat = grad_auto.reshape(5, -1)
    lap_auto = torch.zeros(5, dtype=torch.float64)
    for k in range(flat.shape[1]):   # trace of the Hessian, one coordinate at a time
        (row,) = torch.autograd.grad(flat[:, k].sum(), x, retain_graph=True)
        lap_auto += row.reshape(5, -1)[:, k]
    torch.testing.assert_close(lap, lap_auto, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_gradient_matches_finite_differences(name: str) -> None:
    energy = make_energy(name)
    x = _random_cluster(name, 3, seed=1)
    grad = energy.grad(x)
    h = 1e-6
    fd = torch.zeros_like(x)
    for i in range(x.shape[1]):
        for d in range(x.shape[2]):
            step = torch.zeros_like(x)
            step[:, i, d] = h
            fd[:, i, d] = (energy.energy(x + step) - energy.energy(x - step)) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(energy.force(x), -grad)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_invariances_and_shapes(name: str) -> None:
    energy = make_energy(name)
    x = _random_cluster(name, 4, seed=2)
    e = energy.energy(x)
    assert e.shape == (4,)
    torch.testing.assert_close(energy.energy(x + 3.7), e)                       # translation
    torch.testing.assert_close(energy.energy(x.flip(1)), e)                     # permutation
    torch.testing.assert_close(energy.energy(x.reshape(4, -1)), e)              # flat input
    q, _ = torch.linalg.qr(torch.randn(x.shape[2], x.shape[2], dtype=torch.float64))
    torch.testing.assert_close(energy.energy(x @ q), e)                         # rotation / reflection
    torch.testing.assert_close(energy.grad(x).sum(1), torch.zeros(4, x.shape[2], dtype=torch.float64),
                               atol=1e-8, rtol=0)                               # no net force
    assert energy.log_prob(x).shape == (4,)


def test_harmonic_laplacian_is_trace_of_projector() -> None:
    # With the LJ term switched off (eps = 0) the Laplacian of 0.5 |x - mean|^2 is D (N - 1) = 36.
    energy = LennardJonesEnergy(eps=0.0)
    assert energy.laplacian(_random_cluster("lj13", 2)).tolist() == pytest.approx([36.0, 36.0])


def test_bad_input_is_refused() -> None:
    with pytest.raises(EnfError, match="convention"):
        make_energy("lj13", "halved")
    with pytest.raises(EnfError, match="unknown particle energy"):
        make_energy("lj55")
    with pytest.raises(EnfError, match="expected positions"):
        make_energy("dw4").energy(torch.zeros(2, 3, 2))
    with pytest.raises(EnfError, match="temperature"):
        DoubleWellEnergy(temperature=0.0)
