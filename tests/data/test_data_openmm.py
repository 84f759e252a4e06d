"""OpenMM's independent LJ13 (custom forces) agrees with enf.data.energies; its Langevin sampler; the cross-check."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from enf.data.energies import make_energy
from enf.data.openmm_lj13 import import_openmm, langevin_sample, lattice_start, openmm_energy
from enf.data.particles import OpenMMCheck, compare_with_openmm
from enf.errors import EnfError

pytest.importorskip("openmm")


@pytest.mark.parametrize("convention", ["ordered", "unique"])
def test_openmm_energy_agrees_to_1e_6(convention: str) -> None:
    rng = np.random.default_rng(0)
    compact = lattice_start(20, rng, jitter=0.15)                        # near the cluster's typical energies
    spread = rng.normal(scale=1.5, size=(20, 13, 3))                      # random, some close contacts
    x = np.concatenate([compact, spread])
    ours = make_energy("lj13", convention).energy(torch.as_tensor(x)).numpy()
    theirs = openmm_energy(x, convention)
    np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=0)


def test_langevin_sampler_shapes_and_settings() -> None:
    out = langevin_sample(n_replicas=3, n_samples=4, interval=0.1, burn_in=0.5, seed=1)
    pos = out["positions"]
    assert pos.shape == (4, 3, 13, 3) and np.isfinite(pos).all()
    assert np.abs(pos.mean(2)).max() < 1e-9                               # centred per cluster
    assert out["settings"]["integrator"] == "LangevinMiddleIntegrator"
    with pytest.raises(EnfError, match="bad sampler settings"):
        langevin_sample(n_replicas=0, n_samples=1, interval=0.1, burn_in=0.0, seed=0)


def _md_pool(convention: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    pos = langevin_sample(10, 30, 1.0, 5.0, seed, convention=convention)["positions"]
    pos = pos.reshape(-1, 13, 3)
    return pos, make_energy("lj13").energy(torch.as_tensor(pos)).numpy()


def test_cross_check_passes_on_agreement_and_fails_on_the_wrong_energy() -> None:
    # Stand-ins for the MCMC pool: Langevin samples of the ordered energy (agree) and of the unique one (do not).
    small = OpenMMCheck(replicas=10, samples=30, interval=1.0, burn_in=5.0)
    energy = make_energy("lj13")
    same_pos, same_e = _md_pool("ordered", seed=11)
    agree, md_energies = compare_with_openmm(energy, same_pos, same_e, seed=12, settings=small, log=lambda _m: None)
    assert agree["passed"], agree
    assert md_energies.shape == (300,)
    wrong_pos, wrong_e = _md_pool("unique", seed=13)
    disagree, _ = compare_with_openmm(energy, wrong_pos, wrong_e, seed=12, settings=small, log=lambda _m: None)
    assert not disagree["passed"]
    assert abs(disagree["energy_z"]) > 10
    assert disagree["pair_distance_ks"]["pvalue"] < agree["pair_distance_ks"]["pvalue"]


def test_missing_openmm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openmm", None)   # makes `import openmm` raise ImportError
    with pytest.raises(EnfError, match="pip install openmm"):
        import_openmm()
