"""Boltzmann-generator evaluation: ESS estimators on known weights, ESS = 1 for a model equal to its target, the
Gaussian-to-narrower-Gaussian case with a closed-form ESS, and `enf evaluate --boltzmann` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from enf.data.energies import PairEnergy
from enf.errors import EnfError
from enf.evaluation import boltzmann as bz
from enf.models.flows.cnf import CNF
from enf.models.flows.distributions import sample_com_free_gaussian
from enf.models.flows.particles import ParticleFlow
from enf.models.networks.base import VectorField


class HarmonicEnergy(PairEnergy):
    """E = k/2 sum_i |x_i - mean|^2: the com-free Gaussian of variance 1/k per degree of freedom."""

    name = "harmonic"

    def pair(self, d: Tensor) -> Tensor:
        return torch.zeros_like(d)

    def pair_derivatives(self, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        zero = torch.zeros_like(d)
        return zero, zero, zero


class ZeroField(VectorField):
    """v = 0 (a scale parameter fixed at zero): the flow's density is exactly the base density."""

    def __init__(self, n_dim: int) -> None:
        super().__init__()
        self.n_dim = n_dim
        self.scale = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, t: Tensor, xh: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.scale * xh


def _base_model(n: int = 4, d: int = 2) -> ParticleFlow:
    return ParticleFlow(CNF(ZeroField(d), trace="exact"), n, d).double()


def test_ess_of_known_weights() -> None:
    assert bz.reverse_ess(torch.zeros(50)) == pytest.approx(1.0)
    assert bz.forward_ess(torch.full((50,), 3.0)) == pytest.approx(1.0)
    one = torch.full((10,), -math.inf)
    one[3] = 0.0
    assert bz.reverse_ess(one) == pytest.approx(0.1)
    assert bz.reverse_ess(torch.full((5,), -math.inf)) == 0.0
    assert bz.forward_ess(one) == 0.0  # a target sample with zero model weight
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert bz.reverse_ess(w.log()) == pytest.approx(float(w.sum() ** 2 / (4 * (w * w).sum())))
    assert bz.forward_ess(w.log()) == pytest.approx(float(16 / (w.sum() * (1 / w).sum())))
    assert bz.reverse_ess(torch.tensor([0.0, math.nan])) == pytest.approx(0.5)  # NaN counts as weight zero


def test_ess_is_one_when_the_model_is_the_target() -> None:
    model = _base_model()
    energy = HarmonicEnergy(4, 2, harmonic=1.0)
    data = sample_com_free_gaussian((1000, 4, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = bz.boltzmann_evaluation(model, energy, data, 1000, batch_size=500, trace="exact", seed=0)
    assert out["reverse_ess"] == pytest.approx(1.0, abs=1e-9)
    assert out["forward_ess"] == pytest.approx(1.0, abs=1e-9)
    log_z = 0.5 * 3 * 2 * math.log(2 * math.pi)  # (N - 1) D / 2 log(2 pi) on the com-free subspace
    assert out["log_z_reverse"] == pytest.approx(log_z, abs=1e-8)
    assert out["log_z_forward"] == pytest.approx(log_z, abs=1e-8)
    assert out["n_failed"] == 0
    assert out["js_energy_reweighted"] < 0.05 and out["js_distance_model"] < 0.05
    assert out["mean_energy_model"] == pytest.approx(3.0, rel=0.15)  # <E> = dof / 2


def test_ess_of_a_wider_model_matches_the_closed_form() -> None:
    # q = N(0, 1), p = N(0, 1/2) per degree of freedom: both ESS tend to (sqrt(3) / 2)^dof (dof = 6 here)
    model = _base_model()
    energy = HarmonicEnergy(4, 2, harmonic=2.0)
    data = sample_com_free_gaussian((4000, 4, 2), generator=torch.Generator().manual_seed(2),
                                    dtype=torch.float64) / math.sqrt(2)
    out = bz.boltzmann_evaluation(model, energy, data, 4000, batch_size=2000, trace="exact", seed=3)
    expected = (math.sqrt(3) / 2) ** 6
    assert out["reverse_ess"] == pytest.approx(expected, abs=0.06)
    assert out["forward_ess"] == pytest.approx(expected, abs=0.06)


def test_samples_and_their_density_are_consistent_with_the_forward_nll() -> None:
    from enf.config import resolve
    from enf.models import build_model

    cfg = resolve("dw4", "enf", 100, sets={"model": {"hidden_nf": 8, "n_layers": 1}})
    torch.manual_seed(0)
    model = build_model(cfg).double()
    with torch.no_grad():  # make the field non-trivial
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.cnf.rtol = model.cnf.atol = 1e-8
    s = bz.sample_with_log_prob(model, 8, trace="exact", generator=torch.Generator().manual_seed(0))
    forward = bz.data_log_prob(model, s["positions"], trace="exact")
    torch.testing.assert_close(s["log_q"], forward, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(EnfError, match="qm9"):
        bz.energy_for_data("qm9", "x/test.npz")
    with pytest.raises(EnfError, match="positive"):
        bz.boltzmann_evaluation(_base_model(), HarmonicEnergy(4, 2), torch.zeros(3, 4, 2), 0)
    with pytest.raises(EnfError, match="shape"):
        bz.boltzmann_evaluation(_base_model(), HarmonicEnergy(4, 2), torch.zeros(3, 5, 2), 4)


def test_energy_convention_is_read_from_meta(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"energy": {"name": "lj13", "convention": "unique"}}))
    energy, source = bz.energy_for_data("lj13", tmp_path / "test.npz")
    assert energy.convention == "unique" and "meta.json" in source
    energy, source = bz.energy_for_data("lj13", tmp_path / "sub" / "test.npz")
    assert energy.convention == "ordered" and "default" in source


def test_evaluate_cli_with_boltzmann(dw4_dir: Path, tmp_path: Path) -> None:
    from enf.cli import main
    from enf.config import resolve
    from enf.training import train

    cfg = resolve("dw4", "enf", 64, sets={"train": {"epochs": 0, "batch_size": 32, "eval_batch_size": 32},
                                          "model": {"hidden_nf": 8, "n_layers": 1}})
    train(cfg, dw4_dir, tmp_path / "run", progress=False)
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--data",
               str(dw4_dir / "test.npz"), "--out", str(out), "--boltzmann", "16", "--n", "16"])
    assert rc == 0
    result = json.loads(out.read_text())["boltzmann"]
    assert 0.0 <= result["reverse_ess"] <= 1.0 and 0.0 <= result["forward_ess"] <= 1.0
    assert result["n_samples"] == 16 and result["n_data"] == 16 and result["trace"] == "exact"
    assert len(result["histograms"]["energy_data_density"]) == bz.ENERGY_BINS
    assert (tmp_path / "eval_boltzmann.png").is_file()


def test_ess_table_script(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[3] / "workflow" / "scripts" / "make_ess_table.py"
    spec = importlib.util.spec_from_file_location("make_ess_table", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    manifest = []
    for seed, (rev, fwd) in enumerate(((0.5, 0.4), (0.7, 0.6))):
        path = tmp_path / f"b{seed}.json"
        path.write_text(json.dumps({"nll": 8.0, "boltzmann": {
            "reverse_ess": rev, "forward_ess": fwd, "js_energy_model": 0.01, "js_energy_reweighted": 0.005,
            "log_z_reverse": 29.6, "log_z_forward": 29.7, "n_failed": 1, "n_samples": 100, "n_data": 50,
            "trace": "exact"}}))
        manifest.append({"dataset": "dw4", "model": "enf_fm", "label": "E-NF, flow matching (ours)",
                         "n_train": "1000", "seed": seed, "boltzmann": str(path)})
    manifest.append({"dataset": "lj13", "model": "enf", "label": "E-NF", "n_train": "10", "seed": 0,
                     "boltzmann": str(tmp_path / "missing.json")})
    module.write(manifest, str(tmp_path / "ess"), "test", "")
    md = (tmp_path / "ess.md").read_text()
    assert "| DW4 | 1000 | E-NF, flow matching (ours) | 60.00 ± 14.14 | 50.00 ± 14.14 |" in md
    assert "| LJ13 | 10 | E-NF | not run |" in md
    assert (tmp_path / "ess.csv").is_file()


def test_a_model_of_variable_size_samples_is_refused() -> None:
    """The interface's `event_shape` (None: variable-size samples, e.g. molecules) decides, not a kind string."""

    class Variable(ParticleFlow):
        @property
        def event_shape(self) -> None:
            return None

    base = _base_model()
    model = Variable(base.cnf, 4, 2)
    with pytest.raises(EnfError, match="fixed-size"):
        bz.sample_with_log_prob(model, 2)
    with pytest.raises(EnfError, match="fixed-size"):
        bz.data_log_prob(model, torch.zeros(2, 4, 2))
