"""Argmax + variational dequantisation: log-determinants against autograd, exact decoding, masks, invariance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from enf.errors import EnfError
from enf.geometry import random_orthogonal, remove_mean
from enf.models.flows.dequantize import ArgmaxVariationalDequantizer, argmax_partition, sigmoid_with_logdet

torch.manual_seed(0)
CHARGES = torch.tensor([1.0, 6.0, 7.0, 8.0, 9.0], dtype=torch.float64)


def _molecules(b: int = 4, n: int = 7) -> dict[str, torch.Tensor]:
    mask = torch.ones(b, n, dtype=torch.float64)
    mask[1, 5:] = 0
    mask[3, 3:] = 0
    types = torch.randint(0, 5, (b, n))
    one_hot = F.one_hot(types, 5).to(torch.float64) * mask[..., None]
    charges = CHARGES[types] * mask
    x = remove_mean(torch.randn(b, n, 3, dtype=torch.float64), mask)
    return {"positions": x, "mask": mask, "one_hot": one_hot, "charges": charges}


def _dequantizer() -> ArgmaxVariationalDequantizer:
    deq = ArgmaxVariationalDequantizer(5, hidden_nf=16, n_layers=2).double()
    for layer in deq.net.egnn.layers:  # make the coordinate updates matter for the test
        layer.coord_mlp[2].weight.data.normal_(0, 0.3)
    deq.net.egnn.embedding_out.weight.data.mul_(0.2)  # moderate q like a trained one (|u| << 36: no rounding)
    return deq


def test_argmax_partition_logdet_matches_autograd() -> None:
    for k in range(5):
        one_hot = F.one_hot(torch.tensor(k), 5).to(torch.float64).reshape(1, 1, 5)
        m = torch.ones(1, 1, 1, dtype=torch.float64)
        for scale in (0.5, 3.0, 10.0):
            u = torch.randn(5, dtype=torch.float64) * scale
            z, logdet = argmax_partition(one_hot, u.reshape(1, 1, 5), m)
            jac = torch.autograd.functional.jacobian(
                lambda w, oh=one_hot, mm=m: argmax_partition(oh, w.reshape(1, 1, 5), mm)[0].reshape(-1), u)
            assert torch.allclose(logdet[0], torch.linalg.slogdet(jac)[1], atol=1e-8)
            assert int(z.reshape(-1).argmax()) == k


def test_sigmoid_logdet_matches_autograd() -> None:
    u = torch.randn(2, 3, 1, dtype=torch.float64) * 4
    m = torch.ones(2, 3, 1, dtype=torch.float64)
    _, logdet = sigmoid_with_logdet(u, m)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda w: torch.sigmoid(w), u[b].reshape(-1))
        assert torch.allclose(logdet[b], torch.linalg.slogdet(jac)[1], atol=1e-10)


def test_log_q_is_the_density_of_v_by_change_of_variables() -> None:
    """log q(v) = log N(eps) - log|det dv/deps| per molecule, with the Jacobian taken by autograd."""
    data = _molecules()
    deq = _dequantizer()
    eps = torch.randn(4, 7, 6, dtype=torch.float64)
    args = (data["positions"], data["one_hot"], data["charges"], data["mask"])
    v, log_q = deq(*args, eps=eps)
    for b in range(4):
        m = int(data["mask"][b].sum())

        def f(flat: torch.Tensor, b: int = b, m: int = m) -> torch.Tensor:
            e = eps.clone()
            e[b, :m] = flat.reshape(m, 6)
            return deq(*args, eps=e)[0][b, :m].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, eps[b, :m].reshape(-1))
        log_n = -0.5 * (eps[b, :m] ** 2).sum() - 0.5 * m * 6 * math.log(2 * math.pi)
        assert torch.allclose(log_q[b], log_n - torch.linalg.slogdet(jac)[1], atol=1e-9)
    # padded atoms stay zero
    assert v[1, 5:].abs().max() == 0 and v[3, 3:].abs().max() == 0


def test_decoding_recovers_discrete_features_from_any_dequantised_value() -> None:
    data = _molecules(16, 9)
    deq = _dequantizer()
    mask = data["mask"]
    for scale in (0.1, 1.0, 3.0):
        eps = torch.randn(16, 9, 6, dtype=torch.float64) * scale
        v, _ = deq(data["positions"], data["one_hot"], data["charges"], mask, eps=eps)
        one_hot, charges = deq.decode(v, mask)
        assert torch.equal(one_hot, data["one_hot"]) and torch.equal(charges, data["charges"])
    # any point of the valid set decodes: a vector whose largest entry is the class, a charge in [c, c + 1)
    v = torch.randn(16, 9, 6, dtype=torch.float64) * 4
    types = data["one_hot"].argmax(-1)
    top = v[..., :5].max(-1).values + torch.rand(16, 9, dtype=torch.float64) + 1e-6
    v[..., :5] = v[..., :5].scatter(-1, types[..., None], top[..., None])
    v[..., 5] = data["charges"] + torch.rand(16, 9, dtype=torch.float64) * (1 - 1e-12)
    one_hot, charges = deq.decode(v * mask[..., None], mask)
    assert torch.equal(one_hot, data["one_hot"]) and torch.equal(charges, data["charges"])


def test_q_network_is_invariant_and_masked() -> None:
    data = _molecules()
    deq = _dequantizer()
    x, mask = data["positions"], data["mask"]
    mu, log_sigma = deq.q_params(x, data["one_hot"], data["charges"], mask)
    q = random_orthogonal(1, 3, reflections=True, dtype=torch.float64)[0]
    moved = (x @ q.T + torch.randn(1, 1, 3, dtype=torch.float64)) * mask[..., None]
    mu2, log_sigma2 = deq.q_params(moved, data["one_hot"], data["charges"], mask)
    assert torch.allclose(mu, mu2, atol=1e-9) and torch.allclose(log_sigma, log_sigma2, atol=1e-9)
    assert mu[1, 5:].abs().max() == 0 and log_sigma[3, 3:].abs().max() == 0
    # a molecule's output does not depend on the molecules beside it
    alone = deq.q_params(x[3:4, :3], data["one_hot"][3:4, :3], data["charges"][3:4, :3], mask[3:4, :3])[0]
    assert torch.allclose(alone, mu[3:4, :3], atol=1e-12)


def test_rejects_bad_one_hot() -> None:
    data = _molecules()
    deq = _dequantizer()
    bad = data["one_hot"].clone()
    bad[0, 0] = 0
    with pytest.raises(EnfError, match="exactly one class"):
        deq(data["positions"], bad, data["charges"], data["mask"])
