"""Random orthogonal maps: orthogonal, of the right determinant, and uniform (Haar), unlike Euler-angle products.

Uniformity is checked by moments (a fixed unit vector, rotated, has mean 0 and covariance I/d) and by the
distribution of the rotation angle (Kolmogorov-Smirnov against its Haar law). The same checks reject the
composition Rx Ry Rz of three uniform axis angles, which the authors used for 3D augmentation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from enf.geometry import random_orthogonal, random_rotation_2d, remove_mean, rotate

N = 20_000
F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _euler_xyz(n: int, generator: torch.Generator) -> torch.Tensor:
    """Rx(a) Ry(b) Rz(c) with a, b, c uniform on [-pi, pi): the non-uniform sampler we replaced."""
    angles = (torch.rand(n, 3, generator=generator, dtype=F64) * 2 - 1) * math.pi
    out = torch.eye(3, dtype=F64).repeat(n, 1, 1)
    for axis in range(3):
        i, j = (k for k in range(3) if k != axis)
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        r = torch.eye(3, dtype=F64).repeat(n, 1, 1)
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        out = out @ r
    return out


def _moments_are_uniform(rot: torch.Tensor, vector: torch.Tensor) -> bool:
    """A rotated unit vector has mean ~0 and covariance ~I/d (tolerances ~5 standard errors at N samples)."""
    d = rot.shape[-1]
    v = rot @ (vector / vector.norm())
    cov = v.T @ v / v.shape[0]
    return bool(v.mean(0).abs().max() < 0.02 and (cov - torch.eye(d, dtype=F64) / d).abs().max() < 0.015)


def _angle_ks_pvalue(rot: torch.Tensor) -> float:
    """KS p-value of the 3D rotation angle against its Haar law, density (1 - cos a) / pi on [0, pi]."""
    cos = ((rot.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    angle = torch.arccos(cos).numpy()
    return float(stats.kstest(angle, lambda a: (a - np.sin(a)) / math.pi).pvalue)


@pytest.mark.parametrize("dim", [2, 3, 4])
@pytest.mark.parametrize("reflections", [False, True])
def test_maps_are_orthogonal_with_the_right_determinant(dim: int, reflections: bool) -> None:
    q = random_orthogonal(2000, dim, reflections=reflections, generator=_gen(1), dtype=F64)
    eye = torch.eye(dim, dtype=F64)
    assert torch.allclose(q @ q.transpose(-1, -2), eye.expand_as(q), atol=1e-12)
    det = torch.linalg.det(q)
    assert torch.allclose(det.abs(), torch.ones_like(det), atol=1e-12)
    if reflections:
        assert 0.45 < float((det < 0).double().mean()) < 0.55  # O(d): half of them improper
    else:
        assert (det > 0).all()


@pytest.mark.parametrize("dim", [2, 3, 4])
@pytest.mark.parametrize("reflections", [False, True])
def test_rotated_vectors_are_uniform_on_the_sphere(dim: int, reflections: bool) -> None:
    q = random_orthogonal(N, dim, reflections=reflections, generator=_gen(2), dtype=F64)
    eye = torch.eye(dim, dtype=F64)
    for vector in (eye[0], eye[-1], torch.randn(dim, dtype=F64, generator=_gen(9))):
        assert _moments_are_uniform(q, vector)


def test_rotation_angle_follows_the_haar_law_in_3d() -> None:
    assert _angle_ks_pvalue(random_orthogonal(N, 3, generator=_gen(3), dtype=F64)) > 1e-3


def test_the_checks_reject_euler_angle_products() -> None:
    euler = _euler_xyz(N, _gen(4))
    assert torch.allclose(euler @ euler.transpose(-1, -2), torch.eye(3, dtype=F64).expand_as(euler), atol=1e-12)
    assert not _moments_are_uniform(euler, torch.tensor([0.0, 0.0, 1.0], dtype=F64))  # cov diag (1/2, 1/4, 1/4)
    assert _angle_ks_pvalue(euler) < 1e-8


def test_2d_rotations_have_uniform_angles() -> None:
    for rot in (random_rotation_2d(N, generator=_gen(5), dtype=F64),
                random_orthogonal(N, 2, generator=_gen(6), dtype=F64)):
        assert torch.allclose(torch.linalg.det(rot), torch.ones(N, dtype=F64), atol=1e-12)
        angle = torch.atan2(rot[:, 1, 0], rot[:, 0, 0]).numpy()
        assert stats.kstest(angle, stats.uniform(loc=-math.pi, scale=2 * math.pi).cdf).pvalue > 1e-3
        assert _moments_are_uniform(rot, torch.tensor([1.0, 2.0], dtype=F64))


def test_samplers_are_reproducible_and_honour_dtype() -> None:
    a = random_orthogonal(5, 3, generator=_gen(7))
    b = random_orthogonal(5, 3, generator=_gen(7))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert random_rotation_2d(4, generator=_gen(8), dtype=F64).dtype == F64


def test_rotate_applies_each_sample_its_own_map() -> None:
    x = remove_mean(torch.randn(6, 5, 3, dtype=F64))
    rot = random_orthogonal(6, 3, generator=_gen(10), dtype=F64)
    y = rotate(x, rot)
    for i in range(6):
        assert torch.allclose(y[i], x[i] @ rot[i].T, atol=1e-12)
    assert torch.allclose(rotate(x, rot[0]), x @ rot[0].T, atol=1e-12)


def test_one_pair_distance_function_for_every_caller() -> None:
    """Unique pairs from torch and numpy agree, and the numpy matrix holds them above its diagonal."""
    from enf.geometry import pair_distances

    x = np.array([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]])
    assert pair_distances(x).tolist() == [[3.0, 4.0, 5.0]]
    assert pair_distances(torch.as_tensor(x)).tolist() == [[3.0, 4.0, 5.0]]
    y = np.random.default_rng(0).normal(size=(4, 5, 3))
    full = pair_distances(y, matrix=True)
    i, j = np.triu_indices(5, k=1)
    np.testing.assert_allclose(full[:, i, j], pair_distances(y), rtol=1e-14)
    np.testing.assert_allclose(pair_distances(torch.as_tensor(y)).numpy(), pair_distances(y), rtol=1e-14)
