"""benchmarks/authors_qm9.py runs the authors' own QM9 code, which computes the same per-molecule NLL as enf.

Needs a checkout of vgsatorras/en_flows (ENF_AUTHORS_CHECKOUT, else /tmp/en_flows); skipped without one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from enf.models.pretrained import load_en_flows

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "resources" / "pretrained" / "en_flows_qm9"
GOLDEN = ROOT / "tests" / "golden" / "en_flows_qm9_golden.npz"
CHECKOUT = Path(os.environ.get("ENF_AUTHORS_CHECKOUT", "/tmp/en_flows"))
needs_checkout = pytest.mark.skipif(not (CHECKOUT / "qm9" / "models.py").is_file(),
                                    reason=f"no checkout of vgsatorras/en_flows at {CHECKOUT} (set "
                                           "ENF_AUTHORS_CHECKOUT to a clone to compare with the authors' code)")


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    """benchmarks/authors_qm9.py, imported from its file (benchmarks/ is not a package)."""
    if "authors_qm9" not in sys.modules:
        spec = importlib.util.spec_from_file_location("authors_qm9", ROOT / "benchmarks" / "authors_qm9.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["authors_qm9"] = module
        spec.loader.exec_module(module)
    return sys.modules["authors_qm9"]


@pytest.fixture(scope="module")
def molecules() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Three QM9 test molecules (7, 9 and 12 atoms) in float64, their dequantiser noise and a Gaussian probe."""
    with np.load(GOLDEN) as data:
        g = {k: torch.from_numpy(data[k]).double() for k in data.files}
    batch = {"positions": g["positions"], "mask": g["atom_mask"], "one_hot": g["one_hot"],
             "charges": g["charges"][..., 0]}
    probe = torch.randn(*g["atom_mask"].shape, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return batch, g["dequant_eps"], probe * g["atom_mask"][..., None]


def test_a_wrong_checkout_is_refused_naming_the_missing_files(harness: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "ffjord.py").write_text("")
    with pytest.raises(harness.AuthorsCheckoutError, match="not a usable checkout.*qm9/models.py"):
        harness.AuthorsQM9(tmp_path)


@needs_checkout
@pytest.mark.slow
def test_their_nll_equals_enfs_per_molecule_with_the_same_noise(harness: ModuleType, molecules: tuple,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Same dequantiser noise and the same Gaussian Hutchinson probe fed to both codes, float64, dopri5 at 1e-4,
    their regulariser off (it enters their solver's error control, not the NLL): the same steps, the same NLL.
    About 10 s on one core."""
    batch, eps, probe = molecules
    theirs = harness.AuthorsQM9(CHECKOUT, RELEASE, dtype=torch.float64).nll(batch, "hutch", eps=eps, probe=probe,
                                                                           regularize=False)
    model = load_en_flows(RELEASE / "flow.pt", RELEASE / "dequantizer.pt", RELEASE / "args.json")[0].double()
    monkeypatch.setattr(model.cnf, "_probe", lambda xh, mask: probe[:, : xh.shape[1]])
    with torch.no_grad():
        ours = model.nll(batch, trace="hutchinson", eps=eps)
    assert theirs["nfe"] == model.last_nfe
    for mine, their in (("nll", "nll"), ("log_pz", "log_pz"), ("delta_logp", "delta_logp"), ("log_q", "log_q"),
                        ("log_pM", "log_pN")):
        a, b = ours[mine].double(), theirs[their].double()
        scaled = ((a - b).abs() / b.abs().clamp(min=1.0)).max()
        assert float(scaled) < 1e-6, f"{mine}: enf {a.tolist()} vs theirs {b.tolist()}"


@needs_checkout
@pytest.mark.slow
def test_the_benchmark_step_evaluates_as_their_test_loop(harness: ModuleType, molecules: tuple) -> None:
    """Float32, their random noises, their regulariser integrated: finite per-molecule values and a solve.
    About 8 s on one core."""
    batch, _, _ = molecules
    step = harness.evaluation_step(CHECKOUT, [{k: v.float() for k, v in batch.items()}], seed=0)
    out = step()
    assert out["nll"].shape == (3,) and bool(out["nll"].isfinite().all())
    assert out["nfe_per_solve"] > 10
    assert torch.equal(step()["nll"], out["nll"])  # seeded: the same probes on every call
