"""E-NF's EGNN dynamics: E(n) equivariance, permutation equivariance, masking and parameter count."""

from __future__ import annotations

import torch

from enf.geometry import random_orthogonal, remove_mean
from enf.models.networks.egnn import EGNNDynamics, edge_mask_from, neighbour_diff, neighbour_mask, neighbours

torch.manual_seed(0)


def _field(n_dim: int, n_features: int = 0, **kw: object) -> EGNNDynamics:
    field = EGNNDynamics(n_dim, n_features, **kw).double()
    # The coordinate head starts near zero (Xavier gain 0.001); scale it up so the test sees real updates.
    for layer in field.egnn.layers:
        layer.coord_mlp[2].weight.data.normal_(0, 0.3)
    return field


def test_equivariant_to_orthogonal_maps_translations_and_permutations() -> None:
    for n_dim, n_nodes in ((2, 4), (3, 13)):
        field = _field(n_dim)
        x = torch.randn(5, n_nodes, n_dim, dtype=torch.float64) * 2
        t = torch.tensor(0.37, dtype=torch.float64)
        v = field(t, x)
        q = random_orthogonal(1, n_dim, reflections=True, dtype=torch.float64)[0]
        q[:, 0] = -q[:, 0] if torch.det(q) > 0 else q[:, 0]  # make it a reflection
        assert torch.det(q) < 0
        shift = torch.randn(1, 1, n_dim, dtype=torch.float64) * 5
        v_map = field(t, x @ q.T + shift)
        assert torch.allclose(v_map, v @ q.T, atol=1e-6, rtol=0)
        rot = random_orthogonal(1, n_dim, dtype=torch.float64)[0]
        assert torch.allclose(field(t, x @ rot.T), v @ rot.T, atol=1e-6, rtol=0)
        perm = torch.randperm(n_nodes)
        assert torch.allclose(field(t, x[:, perm]), v[:, perm], atol=1e-6, rtol=0)
        # the velocity lives on the zero-centre-of-mass subspace
        assert v.mean(dim=1).abs().max() < 1e-10
        # and the field is not trivially zero
        assert v.abs().max() > 1e-3


def test_features_are_invariant_and_positions_equivariant_with_masks() -> None:
    field = _field(3, 6, hidden_nf=16, n_layers=2)
    x = torch.randn(3, 7, 3, dtype=torch.float64)
    h = torch.randn(3, 7, 6, dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.float64)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    x = remove_mean(x, mask)
    h = h * mask[..., None]
    t = torch.tensor(0.5, dtype=torch.float64)
    out = field(t, torch.cat([x, h], -1), mask)
    q = random_orthogonal(1, 3, reflections=True, dtype=torch.float64)[0]
    out_q = field(t, torch.cat([x @ q.T, h], -1), mask)
    assert torch.allclose(out_q[..., :3], out[..., :3] @ q.T, atol=1e-6)
    assert torch.allclose(out_q[..., 3:], out[..., 3:], atol=1e-6)
    # padded nodes stay exactly zero
    assert out[0, 5:].abs().max() == 0 and out[2, 3:].abs().max() == 0


def test_padding_does_not_change_real_nodes() -> None:
    field = _field(3, 6, hidden_nf=16, n_layers=2)
    t = torch.tensor(0.2, dtype=torch.float64)
    x = remove_mean(torch.randn(1, 5, 3, dtype=torch.float64))
    h = torch.randn(1, 5, 6, dtype=torch.float64)
    alone = field(t, torch.cat([x, h], -1))
    pad_x = torch.cat([x, torch.randn(1, 4, 3, dtype=torch.float64)], 1)  # garbage in padded slots
    pad_h = torch.cat([h, torch.randn(1, 4, 6, dtype=torch.float64)], 1)
    mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], 1).double()
    padded = field(t, torch.cat([pad_x, pad_h], -1), mask)
    assert torch.allclose(padded[:, :5], alone, atol=1e-10)
    assert padded[:, 5:].abs().max() == 0


def test_sizes_match_the_protocol() -> None:
    dw4 = EGNNDynamics(2, 0, hidden_nf=32, n_layers=3)
    qm9 = EGNNDynamics(3, 6, hidden_nf=64, n_layers=6)
    assert 21_000 < sum(p.numel() for p in dw4.parameters()) < 23_000   # "about 22k"
    # the released QM9 flow holds 176,479 numbers: 18 of them are ActNorm and integration times
    assert sum(p.numel() for p in qm9.parameters()) == 176_479 - 18


def test_neighbour_layout_is_the_dense_graph_without_self_loops() -> None:
    """Row i of `neighbours` lists every j != i once; masks and differences equal the dense ones off the diagonal."""
    for n in (1, 2, 4, 13):
        idx = neighbours(n)
        assert idx.shape == (n, n - 1)
        for i in range(n):
            assert sorted(idx[i].tolist()) == [j for j in range(n) if j != i]
    n = 5
    idx = neighbours(n)
    node_mask = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).unsqueeze(-1)
    x = torch.randn(2, n, 3)
    dense_mask, dense_diff = edge_mask_from(node_mask), x[:, :, None] - x[:, None]
    rows = torch.arange(n)[:, None]
    assert torch.equal(neighbour_mask(node_mask, idx), dense_mask[:, rows, idx])
    assert torch.equal(neighbour_diff(x, idx), dense_diff[:, rows, idx])
