"""The QM9 molecule flow: p(M), the NLL bound and its parts, invariances, batching, sampling, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from enf.cli import main
from enf.config import resolve
from enf.data.datasets import DATASETS
from enf.errors import EnfError
from enf.geometry import random_orthogonal, remove_mean
from enf.models import build_cnf
from enf.models.flows.molecules import MoleculeFlow, build_molecule_flow

CHARGES = np.array([1, 6, 7, 8, 9])


def tiny_cfg(model: str = "enf") -> dict:
    cfg = resolve("qm9", model, sets={"model": {"hidden_nf": 8, "n_layers": 1}})
    cfg["model"].update(dequantizer_nf=8, dequantizer_layers=1)
    cfg["flow"]["adjoint"] = False  # direct back-propagation: these tests are about the model, not the solver
    return cfg


def tiny_flow(model: str = "enf", rtol: float = 1e-4) -> MoleculeFlow:
    cfg = tiny_cfg(model)
    cfg["flow"].update(rtol=rtol, atol=rtol)
    spec = DATASETS.get("qm9")
    flow = build_molecule_flow(cfg, spec, build_cnf(cfg, spec.n_dim, spec.n_features)).double()
    return flow


def molecules(sizes: list[int], width: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random molecules of the given sizes in the batch format of `load_split` (float64)."""
    rng = np.random.default_rng(seed)
    b = len(sizes)
    mask = np.zeros((b, width))
    types = rng.integers(0, 5, (b, width))
    for i, m in enumerate(sizes):
        mask[i, :m] = 1
    pos = rng.normal(size=(b, width, 3)) * 1.3
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in
         (("mask", mask), ("positions", pos), ("charges", CHARGES[types] * mask))}
    t["one_hot"] = F.one_hot(torch.tensor(types), 5).to(torch.float64) * t["mask"][..., None]
    t["positions"] = remove_mean(t["positions"], t["mask"])
    return t


def initialised(flow: MoleculeFlow, data: dict[str, torch.Tensor]) -> MoleculeFlow:
    torch.manual_seed(0)
    flow.initialize(data, data)
    egnn = getattr(flow.cnf.field, "egnn", None)
    for layer in egnn.layers if egnn is not None else ():  # give the coordinate head a real effect
        layer.coord_mlp[2].weight.data.normal_(0, 0.1)
    return flow


def write_qm9_like(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """Small QM9-format split files (3 to 6 atoms, padded to 8)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        data = molecules(list(rng.integers(3, 7, n)), seed=seed + n)
        np.savez(root / f"{split}.npz", positions=data["positions"].numpy().astype(np.float32),
                 atom_mask=data["mask"].numpy().astype(bool), one_hot=data["one_hot"].numpy().astype(bool),
                 charges=data["charges"].numpy().astype(np.int64), num_atoms=data["mask"].sum(1).numpy())
    return root


def test_size_distribution_sums_to_one_and_matches_the_split_histogram() -> None:
    data = molecules([3, 5, 5, 6, 6, 6, 7, 8])
    flow = initialised(tiny_flow(), data)
    probs = flow.size_probs.double()
    assert abs(float(probs.sum()) - 1) < 1e-12
    expected = torch.zeros(30, dtype=torch.float64)
    for m, c in {3: 1, 5: 2, 6: 3, 7: 1, 8: 1}.items():
        expected[m] = c / 8
    assert torch.allclose(probs, expected)
    assert torch.allclose(flow.log_size_prob(torch.tensor([6.0, 4.0])),
                          torch.log(torch.tensor([3 / 8, 1e-30], dtype=torch.float64)))
    assert int(flow.actnorm.initialized) == 1


def test_nll_is_the_sum_of_its_parts_and_needs_p_of_m() -> None:
    data = molecules([3, 5, 8, 6])
    flow = tiny_flow()
    with pytest.raises(EnfError, match="p\\(M\\) is not set"):
        flow.nll(data)
    initialised(flow, data)
    with torch.no_grad():
        out = flow.nll(data)
    assert out["nll"].shape == (4,) and torch.isfinite(out["nll"]).all()
    parts = out["log_pz"] + out["delta_logp"] - out["log_q"] + out["log_pM"]
    assert torch.allclose(out["nll"], -parts)
    assert out["z"].shape == (4, 8, 9) and out["z"][0, 3:].abs().max() == 0
    # the regulariser is only computed when training
    flow.cnf.regularization = 1e-3
    assert out["reg"].abs().max() == 0
    assert flow.nll(data)["reg"].min() > 0


def test_nll_of_a_molecule_does_not_depend_on_its_batch_or_grouping() -> None:
    data = molecules([3, 5, 2, 4], width=5)
    flow = initialised(tiny_flow(rtol=1e-6), data)
    eps = torch.randn(4, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        flow.group_size = None
        batch = flow.nll(data, trace="exact", eps=eps)["nll"]
        flow.group_size = 2
        grouped = flow.nll(data, trace="exact", eps=eps)["nll"]
        alone = flow.nll({k: v[3:4, :4] for k, v in data.items()}, trace="exact", eps=eps[3:4, :4])["nll"]
    assert torch.allclose(batch, grouped, atol=1e-4, rtol=0)
    assert torch.allclose(alone, batch[3:4], atol=1e-4, rtol=0)


def test_nll_is_invariant_to_rotations_translations_and_atom_order() -> None:
    data = molecules([4, 5], width=5)
    flow = initialised(tiny_flow(rtol=1e-6), data)
    eps = torch.randn(2, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        ref = flow.nll(data, trace="exact", eps=eps)["nll"]
        q = random_orthogonal(1, 3, reflections=True, dtype=torch.float64)[0]
        moved = dict(data, positions=(data["positions"] @ q.T + 3.0) * data["mask"][..., None])
        assert torch.allclose(flow.nll(moved, trace="exact", eps=eps)["nll"], ref, atol=1e-4)
        perm = torch.tensor([2, 0, 3, 1, 4])  # permutes the real atoms of the first molecule
        permuted = {k: v[:1, perm] for k, v in data.items()}
        assert torch.allclose(flow.nll(permuted, trace="exact", eps=eps[:1, perm])["nll"], ref[:1], atol=1e-4)


def test_clipping_watches_the_flow_not_the_q_network() -> None:
    flow = tiny_flow()
    ids = {id(p) for p in flow.clip_parameters()}
    assert all(id(p) in ids for p in flow.cnf.parameters())
    assert all(id(p) in ids for p in flow.actnorm.parameters())
    assert not any(id(p) in ids for p in flow.dequantizer.parameters())


def test_sample_batches_sizes_and_flags_failed_solves(monkeypatch: pytest.MonkeyPatch) -> None:
    data = molecules([3, 4, 5, 6, 7, 8, 8, 5])
    flow = initialised(tiny_flow(), data)
    flow.sample_batch_size = 5
    out = flow.sample(12, generator=torch.Generator().manual_seed(1))
    assert out["positions"].shape == (12, 29, 3) and out["one_hot"].shape == (12, 29, 5)
    assert torch.equal(out["atom_mask"].sum(1), out["num_atoms"])
    assert set(out["num_atoms"].tolist()) <= {3, 4, 5, 6, 7, 8}
    assert not out["failed"].any()
    real = out["atom_mask"]
    assert torch.equal(out["one_hot"].sum(-1), real.long())  # one type per real atom, none on padding
    assert out["positions"][~real].abs().max() == 0
    assert out["positions"].sum(1).abs().max() < 1e-4  # centred
    # a field that blows up on 7-atom molecules: those fail, the rest of their batch is unharmed
    field = flow.cnf.field
    original = field.forward

    def exploding(t: torch.Tensor, xh: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        v = original(t, xh, mask)
        bad = (mask.sum(1) == 7)[:, None, None]
        return torch.where(bad, v * float("nan"), v)

    monkeypatch.setattr(field, "forward", exploding)
    out = flow.sample(12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out["failed"], out["num_atoms"] == 7) and out["failed"].any()
    assert out["positions"][out["failed"]].abs().max() == 0
    assert torch.isfinite(out["positions"]).all()


def test_gnf_att_aug_runs_on_qm9() -> None:
    data = molecules([3, 5, 8])
    flow = initialised(tiny_flow("gnf_att_aug"), data)
    out = flow.nll(data)
    assert torch.isfinite(out["nll"]).all()


def test_train_sample_and_evaluate_qm9_from_the_command_line(tmp_path: Path) -> None:
    data = write_qm9_like(tmp_path / "qm9", {"train": 16, "valid": 8, "test": 8})
    run = tmp_path / "run"
    sets = ["model.hidden_nf=8", "model.n_layers=1", "train.batch_size=8", "train.eval_batch_size=8"]
    argv = ["train", "--dataset", "qm9", "--data", str(data), "--out", str(run), "--epochs", "1",
            "--no-progress", "--device", "cpu"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert (run / "checkpoint.pt").is_file()
    samples = tmp_path / "samples.npz"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--n", "6", "--out", str(samples),
                 "--batch-size", "4", "--device", "cpu"]) == 0
    arrays = np.load(samples)
    assert arrays["positions"].shape == (6, 29, 3) and arrays["failed"].shape == (6,)
    assert set(arrays["num_atoms"].tolist()) <= {3, 4, 5, 6}
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(data / "test.npz"),
                 "--out", str(tmp_path / "eval.json"), "--device", "cpu"]) == 0
