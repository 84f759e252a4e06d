"""The authors' released QM9 model imported into enf computes what their code computes (golden values).

golden.npz was made by running the authors' own code (their classes, the released weights, float64) on three QM9
test molecules padded to 12 atoms; see resources/pretrained/en_flows_qm9/README.md for what each array is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from enf.cli import main
from enf.errors import EnfError
from enf.models.checkpoints import load_model
from enf.models.flows.distributions import com_free_gaussian_log_prob, gaussian_log_prob
from enf.models.pretrained import AUTHORS_SIZE_HISTOGRAM, import_en_flows, load_en_flows

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "resources" / "pretrained" / "en_flows_qm9"
GOLDEN = ROOT / "tests" / "golden" / "en_flows_qm9_golden.npz"
FLOW, DEQUANTIZER, ARGS = RELEASE / "flow.pt", RELEASE / "dequantizer.pt", RELEASE / "args.json"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    with np.load(GOLDEN) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_en_flows(FLOW, DEQUANTIZER, ARGS)[0].double()


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, tol: float = 1e-4) -> None:
    """Within tol absolutely, or relatively where |value| > 1."""
    ours, theirs = ours.detach().double(), theirs.detach().double()
    err = (ours - theirs).abs() / theirs.abs().clamp(min=1.0)
    assert float(err.max()) < tol, f"max scaled error {float(err.max()):.3g}"


def batch_of(g: dict[str, torch.Tensor], rows: slice = slice(None), width: int = 12) -> dict[str, torch.Tensor]:
    return {"positions": g["positions"][rows, :width], "mask": g["atom_mask"][rows, :width],
            "one_hot": g["one_hot"][rows, :width], "charges": g["charges"][rows, :width, 0]}


def test_q_network_output(model: torch.nn.Module, golden: dict[str, torch.Tensor]) -> None:
    mu, log_sigma = model.dequantizer.q_params(golden["positions"], golden["one_hot"], golden["charges"],
                                               golden["atom_mask"])
    assert_close(mu, golden["q_mu"], 1e-9)
    assert_close(log_sigma, golden["q_log_sigma"], 1e-9)


def test_dequantised_features_and_log_q(model: torch.nn.Module, golden: dict[str, torch.Tensor]) -> None:
    v, log_q = model.dequantizer(golden["positions"], golden["one_hot"], golden["charges"], golden["atom_mask"],
                                 eps=golden["dequant_eps"])
    assert_close(v, golden["dequant_v"], 1e-9)
    assert_close(log_q, golden["log_q"], 1e-9)
    one_hot, charges = model.dequantizer.decode(v, golden["atom_mask"])
    assert torch.equal(one_hot, golden["one_hot"]) and torch.equal(charges, golden["charges"][..., 0])


@pytest.mark.parametrize("t", [0.25, 0.75])
def test_vector_field(model: torch.nn.Module, golden: dict[str, torch.Tensor], t: float) -> None:
    out = model.cnf.field(torch.tensor(t, dtype=torch.float64), golden["field_state"], golden["atom_mask"])
    assert_close(out, golden[f"field_t{t}"], 1e-9)


def test_base_density_size_prior_and_nll_assembly(model: torch.nn.Module, golden: dict[str, torch.Tensor]) -> None:
    z, mask = golden["z"], golden["atom_mask"]
    log_pz = com_free_gaussian_log_prob(z[..., :3], mask) + gaussian_log_prob(z[..., 3:], mask)
    assert_close(log_pz, golden["log_pz"], 1e-9)
    log_pm = model.log_size_prob(mask.sum(1))
    assert_close(log_pm, golden["log_pN"].double(), 1e-6)  # theirs was computed in float32
    nll = -(golden["log_pz"] + golden["delta_logp"] - golden["log_q"] + log_pm)
    assert_close(nll, golden["nll"], 1e-6)
    assert sum(AUTHORS_SIZE_HISTOGRAM.values()) == 100_000
    assert abs(float(model.size_probs.double().sum()) - 1) < 1e-6


def test_actnorm_log_det_counts_all_position_dimensions(model: torch.nn.Module,
                                                        golden: dict[str, torch.Tensor]) -> None:
    """Their ActNorm log-det counts M * 3 position dimensions: check the convention on the imported scales."""
    mask = golden["atom_mask"]
    xh = torch.cat([golden["positions"], golden["dequant_v"]], -1)
    _, log_det = model.actnorm(xh, mask)
    m = mask.sum(1)
    expected = -(3 * m * model.actnorm.x_log_s.reshape(()) + m * model.actnorm.h_log_s.sum())
    assert_close(log_det, expected, 1e-12)


def test_a_molecule_is_computed_the_same_alone_as_in_its_batch(model: torch.nn.Module,
                                                                golden: dict[str, torch.Tensor]) -> None:
    """Field, q-network and dequantiser of molecule 0 (7 atoms) alone, unpadded, equal its rows in the batch."""
    t = torch.tensor(0.25, dtype=torch.float64)
    alone = model.cnf.field(t, golden["field_state"][:1, :7], golden["atom_mask"][:1, :7])
    assert torch.allclose(alone, golden["field_t0.25"][:1, :7], atol=1e-12)
    v, log_q = model.dequantizer(golden["positions"][:1, :7], golden["one_hot"][:1, :7], golden["charges"][:1, :7],
                                 golden["atom_mask"][:1, :7], eps=golden["dequant_eps"][:1, :7])
    assert torch.allclose(v, golden["dequant_v"][:1, :7], atol=1e-12)
    assert torch.allclose(log_q, golden["log_q"][:1], atol=1e-10)


@pytest.mark.slow
def test_full_log_likelihood_with_exact_trace(model: torch.nn.Module, golden: dict[str, torch.Tensor]) -> None:
    """End to end: dequantiser, ActNorm, ODE with the exact trace at rtol = atol = 1e-7, base density, p(M).

    Molecule 0 is solved alone (7 atoms, no padding) while the golden values come from a padded batch of
    three: this also shows that a molecule's NLL does not depend on its batch. About 20 s on 1 core.
    """
    model.cnf.rtol = model.cnf.atol = 1e-7
    try:
        with torch.no_grad():
            out = model.nll(batch_of(golden, slice(0, 1), 7), trace="exact", eps=golden["dequant_eps"][:1, :7])
    finally:
        model.cnf.rtol = model.cnf.atol = 1e-4
    assert_close(out["z"], golden["z"][:1, :7])
    for ours, theirs in (("delta_logp", "delta_logp"), ("log_pz", "log_pz"), ("log_q", "log_q"),
                         ("log_pM", "log_pN"), ("nll", "nll")):
        assert_close(out[ours], golden[theirs][:1].double())


# -- the import command ------------------------------------------------------------------------------------
def test_import_writes_a_run_directory_that_loads(tmp_path: Path, golden: dict[str, torch.Tensor]) -> None:
    run = tmp_path / "run"
    assert main(["import-en-flows", "--flow", str(FLOW), "--dequantizer", str(DEQUANTIZER), "--out", str(run)]) == 0
    assert {p.name for p in run.iterdir()} == {"checkpoint.pt", "config.yaml", "import.json"}
    loaded, payload = load_model(run / "checkpoint.pt")
    assert payload["config"]["source"]["repository"].endswith("vgsatorras/en_flows")
    assert payload["config"]["model"]["hidden_nf"] == 64 and payload["config"]["model"]["n_layers"] == 6
    out = loaded.double().cnf.field(torch.tensor(0.75, dtype=torch.float64), golden["field_state"],
                                    golden["atom_mask"])
    assert_close(out, golden["field_t0.75"], 1e-9)
    provenance = json.loads((run / "import.json").read_text())
    assert provenance["tensors"] == 136 and len(provenance["flow_sha256"]) == 64


def _edited(tmp_path: Path, flow_edit=None, deq_edit=None, args_edit=None) -> tuple[Path, Path, Path]:
    """Copies of the release with one state dict or the arguments edited."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for src, edit in ((FLOW, flow_edit), (DEQUANTIZER, deq_edit)):
        dst = tmp_path / src.name
        state = torch.load(src, map_location="cpu", weights_only=True)
        if edit:
            edit(state)
        torch.save(state, dst)
        paths.append(dst)
    args = json.loads(ARGS.read_text())
    if args_edit:
        args_edit(args)
    (tmp_path / "args.json").write_text(json.dumps(args))
    return paths[0], paths[1], tmp_path / "args.json"


@pytest.mark.parametrize("case, message", [
    ("missing", "missing tensor"),
    ("unexpected", "unexpected tensor"),
    ("shape", "mis-shaped"),
    ("args", "model options"),
    ("times", "integrates data t=0"),
])
def test_misfits_are_refused_with_a_list_and_nothing_is_written(tmp_path: Path, case: str, message: str) -> None:
    edits = {
        "missing": {"flow_edit": lambda s: s.pop("transformations.1.odefunc.dynamics.egnn.gcl_3.att_mlp.0.weight")},
        "unexpected": {"deq_edit": lambda s: s.update({"net_fn.egnn.gcl_4.edge_mlp.0.weight": torch.zeros(64, 129)})},
        "shape": {"flow_edit": lambda s: s.update(
            {"transformations.1.odefunc.dynamics.egnn.embedding.weight": torch.zeros(64, 8)})},
        "args": {"args_edit": lambda a: a.update(model="gnn_dynamics", conditioning=["homo"])},
        "times": {"flow_edit": lambda s: s.update({"transformations.1.int_time": torch.tensor([1.0, 0.0])})},
    }[case]
    flow, deq, args = _edited(tmp_path / "in", **edits)
    out = tmp_path / "out"
    with pytest.raises(EnfError, match=message) as info:
        import_en_flows(flow, deq, out, args)
    if case == "missing":
        assert "cnf.dynamics.field.egnn.layers.3.att_mlp.0.weight" in str(info.value)
    if case == "args":
        assert "model = 'gnn_dynamics'" in str(info.value) and "conditioning" in str(info.value)
    assert not out.exists()


def test_refuses_files_that_are_not_state_dicts(tmp_path: Path) -> None:
    bad = tmp_path / "flow.pt"
    bad.write_bytes(b"not a torch file")
    shutil.copy(ARGS, tmp_path / "args.json")
    with pytest.raises(EnfError, match="not a readable torch state dict"):
        import_en_flows(bad, DEQUANTIZER, tmp_path / "out")
    with pytest.raises(EnfError, match="file not found"):
        import_en_flows(tmp_path / "nope.pt", DEQUANTIZER, tmp_path / "out", ARGS)
    assert not (tmp_path / "out").exists()
