"""GNF fields: permutation-equivariant, deliberately NOT rotation-equivariant, masked, and sized as the authors'."""

from __future__ import annotations

import pytest
import torch

from enf.config import resolve
from enf.geometry import random_orthogonal, remove_mean
from enf.models import VECTOR_FIELDS
from enf.networks.gnf import GNFDynamics

torch.manual_seed(0)
F64 = torch.float64


def _field(n_dim: int, n_features: int = 0, **kw: object) -> GNFDynamics:
    return GNFDynamics(n_dim, n_features, **{"hidden_nf": 16, "n_layers": 2, **kw}).double()


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("n_dim,n_nodes", [(2, 4), (3, 13)])
def test_permutation_equivariant_but_not_rotation_equivariant(attention: bool, n_dim: int, n_nodes: int) -> None:
    field = _field(n_dim, attention=attention)
    x = remove_mean(torch.randn(5, n_nodes, n_dim, dtype=F64) * 2)
    t = torch.tensor(0.37, dtype=F64)
    v = field(t, x)
    perm = torch.randperm(n_nodes)
    assert torch.allclose(field(t, x[:, perm]), v[:, perm], atol=1e-10, rtol=0)
    assert v.mean(dim=1).abs().max() < 1e-12
    rot = random_orthogonal(1, n_dim, dtype=F64, generator=torch.Generator().manual_seed(3))[0]
    gap = (field(t, x @ rot.T) - v @ rot.T).abs().max()
    assert gap > 1e-2 * v.abs().max()  # far beyond rounding: the field sees raw coordinates
    assert not torch.allclose(field(torch.tensor(0.9, dtype=F64), x), v)  # and it depends on time


def test_features_with_masks_and_padding() -> None:
    field = _field(3, 6, self_edges=True)
    t = torch.tensor(0.2, dtype=F64)
    x = remove_mean(torch.randn(1, 5, 3, dtype=F64))
    h = torch.randn(1, 5, 6, dtype=F64)
    alone = field(t, torch.cat([x, h], -1))
    assert alone.shape == (1, 5, 9)
    pad = torch.cat([torch.cat([x, h], -1), torch.randn(1, 4, 9, dtype=F64) * 3], 1)  # garbage in padding
    mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], 1).double()
    padded = field(t, pad, mask)
    assert torch.allclose(padded[:, :5], alone, atol=1e-12)
    assert padded[:, 5:].abs().max() == 0
    perm = torch.randperm(5)
    assert torch.allclose(field(t, torch.cat([x, h], -1)[:, perm]), alone[:, perm], atol=1e-10)
    # self-edges add the message m_ii, so they change the field
    field.self_edges = False
    assert not torch.allclose(field(t, torch.cat([x, h], -1)), alone)


def test_sizes_match_the_authors_gnn() -> None:
    # DW4: nf 32, 3 layers, node input [t, x] (3 numbers), output 2: 128 + 3 * 6272 + 66 = 19,010 parameters;
    # attention adds one Linear(32, 1) per layer.
    count = lambda f: sum(p.numel() for p in f.parameters())  # noqa: E731
    assert count(GNFDynamics(2, 0, 32, 3, attention=False)) == 19_010
    assert count(GNFDynamics(2, 0, 32, 3, attention=True)) == 19_010 + 3 * 33
    # QM9: node input [x, h, t] (3 + 6 + 1), output of the same width; nf 64, 6 layers
    layer = 2 * (128 * 64 + 64 + 64 * 64 + 64) + 65  # phi_e, phi_h (two linear layers each), attention
    assert count(GNFDynamics(3, 6, 64, 6, attention=True)) == (10 * 64 + 64) + 6 * layer + (64 * 10 + 10)


def test_registered_defaults_follow_the_protocol() -> None:
    for name, attention, augment in (("gnf", False, False), ("gnf_att", True, False), ("gnf_att_aug", True, True)):
        for dataset, nf, layers, lr, reg in (("dw4", 32, 3, 1e-3, 0.0), ("lj13", 32, 3, 1e-3, 0.0),
                                             ("qm9_positional", 64, 6, 5e-4, 1e-3), ("qm9", 64, 6, 5e-4, 1e-3)):
            cfg = resolve(dataset, name)
            assert (cfg["model"]["hidden_nf"], cfg["model"]["n_layers"]) == (nf, layers)
            assert cfg["model"]["attention"] is attention and cfg["train"]["augment_rotation"] is augment
            assert cfg["train"]["lr"] == lr and cfg["flow"]["regularization"] == reg
            assert cfg["flow"]["rtol"] == cfg["flow"]["atol"] == 1e-4
            assert cfg["model"]["self_edges"] is (dataset == "qm9")
            field = VECTOR_FIELDS.get(name)(3 if dataset != "dw4" else 2, 6 if dataset == "qm9" else 0,
                                            cfg["model"])
            assert isinstance(field, GNFDynamics) and field.layers[0].attention is attention
