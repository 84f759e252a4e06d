"""benchmarks/physical_floor.py: AIS and quadrature give the closed form on Gaussians, and DW4's log Z quickly."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor

from enf.data.energies import LennardJonesEnergy, PairEnergy, make_energy
from enf.models.flows.distributions import com_free_gaussian_log_prob, sample_com_free_gaussian

ROOT = Path(__file__).resolve().parents[2]
DW4_LOG_Z = 29.67   # the value the tables quote


@pytest.fixture(scope="module")
def floor() -> ModuleType:
    """benchmarks/physical_floor.py, imported from its file (benchmarks/ is not a package)."""
    if "physical_floor" not in sys.modules:
        spec = importlib.util.spec_from_file_location("physical_floor", ROOT / "benchmarks" / "physical_floor.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["physical_floor"] = module
        spec.loader.exec_module(module)
    return sys.modules["physical_floor"]


class PairGaussian(PairEnergy):
    """u(d) = d^2 / (2 M): sum_{i<j} |x_i - x_j|^2 = M sum_i |x_i - mean|^2, so E = |x - mean|^2 / 2."""

    name = "pair-gaussian"

    def pair(self, d: Tensor) -> Tensor:
        return d * d / (2 * self.n_particles)

    def pair_derivatives(self, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.n_particles
        return d * d / (2 * m), d / m, torch.full_like(d, 1.0 / m)


def test_the_closed_form_is_the_base_densitys_normaliser_and_entropy(floor: ModuleType) -> None:
    n, dim = 5, 3
    g = floor.gaussian_floor((n - 1) * dim)
    x = sample_com_free_gaussian((20000, n, dim), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_p = com_free_gaussian_log_prob(x)
    # log p = -|x|^2 / 2 - log Z exactly, and H = E[-log p] (Monte Carlo, 0.02 nats of noise).
    assert torch.allclose(log_p, -0.5 * (x * x).sum((1, 2)) - g["log_z"])
    assert abs(float(-log_p.mean()) - g["entropy"]) < 0.1
    assert g["entropy"] == pytest.approx(0.5 * (n - 1) * dim * (1 + math.log(2 * math.pi)))


def test_the_annealed_energy_runs_from_the_reference_to_the_target(floor: ModuleType) -> None:
    target = make_energy("lj13", "ordered")
    path = floor.AnnealedEnergy(target, k_ref=0.5)
    x = sample_com_free_gaussian((8, 13, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference = 0.25 * (x * x).sum((1, 2))
    path.set_beta(0.0)
    assert torch.allclose(path.energy(x), reference)
    path.set_beta(1.0)
    assert torch.allclose(path.energy(x), target.energy(x))
    path.set_beta(0.3)
    assert torch.allclose(path.energy(x), reference + 0.3 * path.potential(x))
    assert torch.allclose(path.potential(x), target.energy(x) - reference)


def test_quadrature_of_a_pair_gaussian_gives_the_closed_form(floor: ModuleType) -> None:
    exact = floor.gaussian_floor(6)
    got = floor.quadrature_4x2(PairGaussian(4, 2), spacing=0.25, extent=10.0, rho_spacing=0.1)
    for key in ("log_z", "mean_energy", "entropy"):
        assert got[key] == pytest.approx(exact[key], abs=1e-6)


def test_ais_on_a_harmonic_energy_matches_the_closed_form_within_three_standard_errors(floor: ModuleType) -> None:
    # LJ switched off: only the harmonic term |x - mean|^2 / 2 is left; the reference is 2x wider.
    target = LennardJonesEnergy(n_particles=5, n_dim=3, eps=0.0, harmonic=1.0)
    settings = floor.AISSettings(k_ref=0.25, chains=1000, temperatures=100, sweeps=2, pilot_chains=128,
                                 bootstrap=300, target_sweeps=200)
    got = floor.anneal(target, settings, seed=0)
    exact = floor.gaussian_floor(target.dof)
    assert got["ess"] > 0.2 * settings.chains
    assert 0 < got["log_z_se"] < 0.1
    assert abs(got["log_z"] - exact["log_z"]) < 3 * got["log_z_se"]
    assert abs(got["mean_energy"] - exact["mean_energy"]) < 3 * got["mean_energy_se"]
    assert abs(got["entropy"] - exact["entropy"]) < 3 * got["entropy_se"]
    assert abs(got["mcmc_mean_energy"] - exact["mean_energy"]) < 3 * got["mcmc_mean_energy_se"]
    assert abs(got["mcmc_entropy"] - exact["entropy"]) < 3 * got["mcmc_entropy_se"]


def test_the_dw4_quadrature_gives_the_quoted_floor(floor: ModuleType) -> None:
    got = floor.quadrature_4x2(make_energy("dw4"))
    assert got["log_z"] == pytest.approx(DW4_LOG_Z, abs=0.005)
    assert got["entropy"] == pytest.approx(7.13, abs=0.005)


@pytest.mark.slow
def test_a_quick_run_on_dw4_is_close_to_the_exact_log_z(floor: ModuleType, tmp_path: Path) -> None:
    rows = floor.main(["--systems", "dw4", "--quick", "--out-dir", str(tmp_path)])
    ais = next(r for r in rows if r["method"] == "AIS")
    assert abs(ais["log_z"] - DW4_LOG_Z) < 0.3
    assert abs(ais["entropy"] - 7.13) < 0.5
    saved = json.loads((tmp_path / "physical_floor.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["quadrature", "AIS"]
    assert (tmp_path / "physical_floor.csv").read_text().startswith("system,method,log_z")
    with pytest.raises(SystemExit):
        floor.main(["--systems", "dw5", "--out-dir", str(tmp_path)])
