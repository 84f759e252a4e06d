"""ActNorm: invertibility, masking, data initialisation and its log-determinant against autograd."""

from __future__ import annotations

import math

import pytest
import torch

from enf.geometry import remove_mean
from enf.models.flows.actnorm import ActNorm

torch.manual_seed(0)


def _inputs(b: int = 4, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones(b, n, dtype=torch.float64)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    x = remove_mean(torch.randn(b, n, 3, dtype=torch.float64) * 1.7, mask)
    h = torch.randn(b, n, 6, dtype=torch.float64) * 3 + 2
    return torch.cat([x, h], -1) * mask[..., None], mask


def _randomised(position_logdet: str = "all") -> ActNorm:
    norm = ActNorm(3, 6, position_logdet).double()
    with torch.no_grad():
        norm.x_log_s.fill_(0.7)
        norm.h_t.normal_()
        norm.h_log_s.normal_(0, 0.5)
    return norm


def test_reverse_inverts_forward_and_padding_stays_zero() -> None:
    xh, mask = _inputs()
    norm = _randomised()
    y, _ = norm(xh, mask)
    assert y[0, 4:].abs().max() == 0 and y[2, 2:].abs().max() == 0
    assert torch.allclose(norm.reverse(y, mask), xh, atol=1e-12)
    # positions are only scaled: the centre of mass stays at zero
    assert y[..., :3].sum(1).abs().max() < 1e-12


def test_logdet_counts_real_atoms_and_matches_autograd() -> None:
    xh, mask = _inputs()
    norm = _randomised("all")
    _, logdet = norm(xh, mask)
    for b in range(xh.shape[0]):
        m = int(mask[b].sum())

        def f(flat: torch.Tensor, b: int = b, m: int = m) -> torch.Tensor:
            full = xh[b:b + 1].clone()
            full[0, :m] = flat.reshape(m, 9)
            return norm(full, mask[b:b + 1])[0][0, :m].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, xh[b, :m].reshape(-1))
        assert torch.allclose(logdet[b], torch.linalg.slogdet(jac)[1], atol=1e-10)


def test_subspace_convention_differs_by_one_atoms_positions() -> None:
    xh, mask = _inputs()
    all_dims = _randomised("all")
    sub = _randomised("subspace")
    sub.load_state_dict(all_dims.state_dict())
    diff = sub(xh, mask)[1] - all_dims(xh, mask)[1]
    assert torch.allclose(diff, torch.full_like(diff, 3 * 0.7), atol=1e-12)
    with pytest.raises(ValueError, match="position_logdet"):
        ActNorm(3, 6, "half")


def test_initialize_normalises_a_batch() -> None:
    xh, mask = _inputs(64, 9)
    norm = ActNorm(3, 6).double()
    assert int(norm.initialized) == 0
    norm.initialize(xh, mask)
    assert int(norm.initialized) == 1
    y, _ = norm(xh, mask)
    real = mask.bool()
    h = y[..., 3:][real]
    assert torch.allclose(h.mean(0), torch.zeros(6, dtype=h.dtype), atol=1e-10)
    assert torch.allclose(h.std(0, unbiased=False), torch.ones(6, dtype=h.dtype), atol=1e-3)
    # one shared position scale: the mean squared atom distance from the centre becomes 1
    sq = (y[..., :3][real] ** 2).sum(-1).mean()
    assert math.isclose(float(sq.detach()), 1.0, rel_tol=1e-3)
