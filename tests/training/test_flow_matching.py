"""Flow matching: pairings never increase the transport cost, aligned draws are symmetry images, the loss of the
exact field of a solvable case (Gaussian to Gaussian) is minimal, and the trainer runs the objective end to end."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from enf.config import resolve
from enf.errors import EnfError
from enf.geometry import random_orthogonal, rotate
from enf.models.flows.distributions import sample_com_free_gaussian
from enf.models.networks.base import VectorField
from enf.training import flow_matching as fm


def _cloud(b: int, n: int, d: int, seed: int, scale: float = 1.0, features: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = sample_com_free_gaussian((b, n, d), generator=gen, dtype=torch.float64) * scale
    if features:
        x = torch.cat([x, torch.randn(b, n, features, generator=gen, dtype=torch.float64)], -1)
    return x


def _brute_force_orbit_distance(x: Tensor, y: Tensor, n_dim: int) -> Tensor:
    """min over permutations and O(D) of |x - R y_pi|^2 by enumeration and SVD (reference for small N)."""
    best = torch.full((x.shape[0],), math.inf, dtype=x.dtype)
    for perm in itertools.permutations(range(x.shape[1])):
        yp = y[:, list(perm)]
        u, _, vh = torch.linalg.svd(yp[..., :n_dim].transpose(1, 2) @ x[..., :n_dim])
        r = vh.transpose(1, 2) @ u.transpose(1, 2)
        pos = torch.einsum("pij,pnj->pni", r, yp[..., :n_dim])
        img = torch.cat([pos, yp[..., n_dim:]], -1)
        best = torch.minimum(best, fm.squared_distance(x, img))
    return best


# -- pairing --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,d,features", [(4, 2, 0), (6, 3, 0), (5, 3, 2)])
@pytest.mark.parametrize("pairing", ["ot", "aligned", "equivariant_ot"])
def test_pairing_never_increases_transport_cost(n: int, d: int, features: int, pairing: str) -> None:
    x = _cloud(12, n, d, 0, scale=2.0, features=features)
    z = _cloud(12, n, d, 1, features=features)
    zp = fm.pair_batch(x, z, pairing, d)
    before, after = fm.squared_distance(x, z).sum(), fm.squared_distance(x, zp).sum()
    assert after <= before + 1e-9
    if pairing == "equivariant_ot":  # also never worse than plain OT, and each pair no worse than unaligned
        assert after <= fm.squared_distance(x, fm.pair_batch(x, z, "ot", d)).sum() + 1e-9
        _, cost = fm.align(x, z, d)
        assert (cost <= fm.squared_distance(x, z) + 1e-9).all()
    if pairing == "aligned":  # no matching across the batch: draw i stays with x[i], as one of its own images
        assert (fm.squared_distance(x, zp) <= fm.squared_distance(x, z) + 1e-9).all()
        torch.testing.assert_close(torch.cdist(zp[..., :d], zp[..., :d]).sort(-1).values.sort(1).values,
                                   torch.cdist(z[..., :d], z[..., :d]).sort(-1).values.sort(1).values)
        matched = fm.pair_batch(x, z, "equivariant_ot", d)  # the same alignments, then matched: never worse
        assert fm.squared_distance(x, matched).sum() <= fm.squared_distance(x, zp).sum() + 1e-9


def test_candidate_pairing_is_valid_and_radial_bound_is_a_lower_bound() -> None:
    x, z = _cloud(12, 7, 3, 20, scale=1.5), _cloud(12, 7, 3, 21)
    zp = fm.pair_batch(x, z, "equivariant_ot", 3, candidates=3)
    assert fm.squared_distance(x, zp).sum() <= fm.squared_distance(x, fm.pair_batch(x, z, "ot", 3)).sum() + 1e-9
    assert sorted(zp.pow(2).sum((1, 2)).tolist()) == pytest.approx(sorted(z.pow(2).sum((1, 2)).tolist()))
    xs, zs = _cloud(6, 5, 3, 22, scale=1.5), _cloud(6, 5, 3, 23)
    bound = fm.radial_lower_bound(xs, zs, 3)
    exact = torch.stack([_brute_force_orbit_distance(xs, zs[j:j + 1].expand_as(xs), 3) for j in range(6)], 1)
    assert (bound <= exact + 1e-9).all()


def test_exact_alignment_matches_enumeration_and_iterative_is_an_upper_bound() -> None:
    x, y = _cloud(40, 4, 2, 2, scale=2.0), _cloud(40, 4, 2, 3)
    exact = _brute_force_orbit_distance(x, y, 2)
    _, cost = fm.align(x, y, 2)
    torch.testing.assert_close(cost, exact, rtol=1e-9, atol=1e-9)
    x3, y3 = _cloud(40, 5, 3, 4, scale=2.0, features=1), _cloud(40, 5, 3, 5, features=1)
    _, cost3 = fm.align(x3, y3, 3)  # 5 nodes: exact path, with node features in the cost
    torch.testing.assert_close(cost3, _brute_force_orbit_distance(x3, y3, 3), rtol=1e-9, atol=1e-9)
    iterative = fm._align_iterative(x3, y3, 3, True, fm.ALIGN_ITERATIONS)
    img = fm._apply(y3, *reversed(iterative), 3)
    assert (fm.squared_distance(x3, img) >= cost3 - 1e-9).all()


def test_alignment_finds_an_exact_symmetry_image() -> None:
    x = _cloud(16, 4, 2, 6)
    rot = random_orthogonal(16, 2, reflections=True, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    perm = torch.stack([torch.randperm(4, generator=torch.Generator().manual_seed(i)) for i in range(16)])
    y = torch.gather(rotate(x, rot), 1, perm.unsqueeze(-1).expand(-1, -1, 2))
    img, cost = fm.align(x, y, 2)
    assert cost.max() < 1e-20
    torch.testing.assert_close(img, x)


@pytest.mark.parametrize("n,d,features", [(4, 2, 0), (7, 3, 0), (6, 3, 3)])
def test_aligned_draw_is_a_symmetry_image(n: int, d: int, features: int) -> None:
    x, y = _cloud(10, n, d, 7, scale=2.0, features=features), _cloud(10, n, d, 8, features=features)
    img, _ = fm.align(x, y, d)
    # positions: still centred, same multiset of pair distances and of radii; features: same multiset of rows
    assert img[..., :d].sum(1).abs().max() < 1e-10
    for a, b in ((img, y),):
        da = torch.cdist(a[..., :d], a[..., :d]).flatten(1).sort(1).values
        db = torch.cdist(b[..., :d], b[..., :d]).flatten(1).sort(1).values
        torch.testing.assert_close(da, db)
    if features:
        fa = torch.sort(img[..., d:].sum(-1), dim=1).values
        fb = torch.sort(y[..., d:].sum(-1), dim=1).values
        torch.testing.assert_close(fa, fb)
    # and exactly R y_pi for some permutation and orthogonal R: recover them and check the residual
    cost_img_to_y = _brute_force_orbit_distance(img, y, d) if n <= 6 else None
    if cost_img_to_y is not None:
        assert cost_img_to_y.max() < 1e-18


def test_masked_pairing_keeps_padding_and_sizes() -> None:
    b, n, d, f = 10, 6, 3, 2
    sizes = torch.tensor([3, 5, 6, 3, 5, 6, 3, 5, 6, 4])
    mask = (torch.arange(n)[None] < sizes[:, None]).double()
    mask[0] = torch.tensor([1.0, 0, 1, 0, 1, 0])  # real nodes need not come first
    x = fm.sample_base(torch.zeros(b, n, d + f, dtype=torch.float64), mask, d) * 2
    z = fm.sample_base(x, mask, d)
    for pairing in ("ot", "aligned", "equivariant_ot"):
        zp = fm.pair_masked(x, z, mask, pairing, d)
        assert (zp[mask == 0] == 0).all()
        assert zp[..., :d].sum(1).abs().max() < 1e-10
        assert fm.squared_distance(x, zp).sum() <= fm.squared_distance(x, z).sum() + 1e-9
        norms_in = sorted(float(v) for v in z.pow(2).sum((1, 2)))
        norms_out = sorted(float(v) for v in zp.pow(2).sum((1, 2)))
        np.testing.assert_allclose(norms_in, norms_out, rtol=1e-9)  # each draw used once, up to symmetry


# -- the loss on a solvable case ----------------------------------------------------------------------------------
class GaussianField(VectorField):
    """The marginal velocity of the straight paths between N(0, s^2) data (t = 0) and N(0, 1) latents (t = 1),
    times a factor c: v = c (t - (1 - t) s^2) / ((1 - t)^2 s^2 + t^2 + sigma^2) x."""

    def __init__(self, s: float, sigma: float, c: float = 1.0, scalar_time_only: bool = False) -> None:
        super().__init__()
        self.n_dim, self.s, self.sigma = 2, s, sigma
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))
        self.scalar_time_only = scalar_time_only

    def forward(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.scalar_time_only and t.dim() > 0:
            raise RuntimeError("one time per call")
        s2 = self.s ** 2
        k = (t - (1 - t) * s2) / ((1 - t) ** 2 * s2 + t ** 2 + self.sigma ** 2)
        return self.c * k * xh


def _expected_min(s: float, sigma: float) -> float:
    """E_t of the per-degree-of-freedom conditional variance of u = z - x given x_t (t uniform), by quadrature."""
    t = (np.arange(200_000) + 0.5) / 200_000
    s2 = s * s
    return float(np.mean(1 + s2 - (t - (1 - t) * s2) ** 2 / ((1 - t) ** 2 * s2 + t ** 2 + sigma ** 2)))


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_loss_of_exact_field_is_minimal(sigma: float) -> None:
    s, b = 1.7, 40_000
    gen = torch.Generator().manual_seed(11)
    x = sample_com_free_gaussian((b, 4, 2), generator=gen, dtype=torch.float64) * s
    z = sample_com_free_gaussian((b, 4, 2), generator=gen, dtype=torch.float64)
    t = torch.rand(b, generator=gen, dtype=torch.float64)
    noise = sample_com_free_gaussian((b, 4, 2), generator=gen, dtype=torch.float64)
    field = GaussianField(s, sigma)
    loss = fm.matching_loss(field, x, z, t, None, 2, sigma, noise)
    (grad,) = torch.autograd.grad(loss, field.c)
    loss = loss.detach()
    # at the minimum the derivative in c vanishes (up to Monte Carlo error) and the value is the conditional variance
    assert abs(float(grad)) < 0.02 * float(loss)
    assert float(loss) == pytest.approx(_expected_min(s, sigma), rel=0.02)
    for c in (0.8, 1.2):  # any other field of the family is worse
        assert fm.matching_loss(GaussianField(s, sigma, c), x, z, t, None, 2, sigma, noise) > loss


def test_scalar_time_fields_get_one_call_per_sample() -> None:
    x, z = _cloud(6, 4, 2, 12, scale=1.5), _cloud(6, 4, 2, 13)
    t = torch.linspace(0.05, 0.95, 6, dtype=torch.float64)
    batched = fm.matching_loss(GaussianField(1.5, 0.0, 0.9), x, z, t, None, 2)
    looped = fm.matching_loss(GaussianField(1.5, 0.0, 0.9, scalar_time_only=True), x, z, t, None, 2)
    torch.testing.assert_close(batched, looped)


# -- settings and the trainer ----------------------------------------------------------------------------------------
def test_bad_settings_name_their_key() -> None:
    cfg = resolve("dw4", "enf", 100)
    model_batch = {"positions": _cloud(4, 4, 2, 0).float()}
    from enf.models import build_model

    model = build_model(cfg)
    for key, value in (("pairing", "sinkhorn"), ("sigma", -1.0), ("sigma", "wide")):
        bad = {**cfg, "flow_matching": {**cfg["flow_matching"], key: value}}
        with pytest.raises(EnfError, match=f"flow_matching.{key}"):
            fm.flow_matching_loss(model, model_batch, bad)


@pytest.mark.parametrize("pairing", ["none", "ot", "aligned", "equivariant_ot"])
def test_loss_backpropagates_into_the_field(pairing: str) -> None:
    from enf.models import build_model

    cfg = resolve("lj13", "enf", 100, sets={"flow_matching": {"pairing": pairing, "sigma": 0.05},
                                            "model": {"hidden_nf": 8, "n_layers": 1}})
    torch.manual_seed(0)
    model = build_model(cfg)
    out = fm.flow_matching_loss(model, {"positions": _cloud(6, 13, 3, 0, scale=1.2).float()}, cfg)
    out["loss"].backward()
    grads = [p.grad for p in model.cnf.field.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert math.isfinite(float(out["transport_cost"]))


def test_molecule_state_and_loss() -> None:
    from enf.models import build_model

    cfg = resolve("qm9", "enf", None, sets={"model": {"hidden_nf": 8, "n_layers": 1}})
    cfg["model"].update(dequantizer_nf=8, dequantizer_layers=1)
    torch.manual_seed(0)
    model = build_model(cfg)
    b, n = 5, 29
    sizes = torch.tensor([3, 4, 4, 6, 3])
    mask = (torch.arange(n)[None] < sizes[:, None]).float()
    pos = torch.randn(b, n, 3) * mask[..., None]
    types = torch.randint(0, 5, (b, n))
    one_hot = torch.nn.functional.one_hot(types, 5).float() * mask[..., None]
    charges = torch.tensor([1.0, 6, 7, 8, 9])[types] * mask
    batch = {"positions": pos, "mask": mask, "one_hot": one_hot, "charges": charges}
    model.initialize(batch)
    xh, m, n_dim = model.continuous_state(batch)
    assert xh.shape == (b, 6, 9) and m.shape == (b, 6) and n_dim == 3   # unused padding columns dropped
    assert (xh[m == 0] == 0).all() and xh[..., :3].sum(1).abs().max() < 1e-5
    for pairing in ("none", "equivariant_ot"):
        cfg["flow_matching"]["pairing"] = pairing
        out = fm.flow_matching_loss(model, batch, cfg)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
    assert all(p.grad is None for p in model.dequantizer.parameters())  # the dequantiser is not trained by FM


def test_trainer_runs_flow_matching(dw4_dir: Path, tmp_path: Path) -> None:
    from enf.training import train

    cfg = resolve("dw4", "enf", 64, sets={"train": {"objective": "flow_matching", "epochs": 2, "batch_size": 32,
                                                    "eval_batch_size": 32, "eval_every": 1},
                                          "model": {"hidden_nf": 8, "n_layers": 1}})
    metrics = train(cfg, dw4_dir, tmp_path / "run", progress=False)
    assert math.isfinite(metrics["test_nll"]) and metrics["epochs"] == 2
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
