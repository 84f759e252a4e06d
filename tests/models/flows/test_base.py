"""The one model interface (`enf.models.flows.base.DensityModel`): every model of every data set implements it."""

from __future__ import annotations

import inspect

import pytest
import torch

from enf.config import resolve
from enf.data.datasets import DATASETS
from enf.models import build_model
from enf.models.flows.base import DensityModel
from enf.models.flows.molecules import MoleculeFlow
from enf.models.flows.particles import ParticleFlow

CASES = [("dw4", "enf"), ("lj13", "enf"), ("qm9", "enf")]


def _model(dataset: str, model: str) -> DensityModel:
    cfg = resolve(dataset, model, sets={"model": {"hidden_nf": 8, "n_layers": 1}})
    if dataset == "qm9":
        cfg["model"].update(dequantizer_nf=8, dequantizer_layers=1)
    cfg["flow"]["adjoint"] = False
    return build_model(cfg).double()


def _batch(dataset: str, b: int = 3) -> dict[str, torch.Tensor]:
    spec = DATASETS.get(dataset)
    gen = torch.Generator().manual_seed(0)
    if spec.kind == "particles":
        return {"positions": torch.randn(b, spec.n_nodes, spec.n_dim, generator=gen, dtype=torch.float64)}
    width = 5
    sizes = torch.tensor([3, 4, 2])[:b]
    mask = (torch.arange(width)[None] < sizes[:, None]).double()
    types = torch.randint(0, spec.n_features - 1, (b, width), generator=gen)
    one_hot = torch.nn.functional.one_hot(types, spec.n_features - 1).double() * mask[..., None]
    charges = torch.tensor([1.0, 6, 7, 8, 9])[types] * mask
    pos = torch.randn(b, width, spec.n_dim, generator=gen, dtype=torch.float64) * mask[..., None]
    return {"positions": pos, "mask": mask, "one_hot": one_hot, "charges": charges}


def test_every_model_class_implements_the_interface() -> None:
    for cls in (ParticleFlow, MoleculeFlow):
        assert issubclass(cls, DensityModel)
        assert not inspect.isabstract(cls), f"{cls.__name__} leaves abstract members"


@pytest.mark.parametrize(("dataset", "model"), CASES)
def test_conformance(dataset: str, model: str) -> None:
    """Every member of the interface works on a built model and agrees with `nll`."""
    torch.manual_seed(0)
    flow = _model(dataset, model)
    assert isinstance(flow, DensityModel)
    batch = _batch(dataset)
    flow.initialize(batch, batch)
    ids = {id(p) for p in flow.parameters()}
    assert flow.clip_parameters() and all(id(p) in ids for p in flow.clip_parameters())
    out = flow.nll(batch, trace="exact")
    assert out["nll"].shape == (3,) and out["reg"].shape == (3,) and torch.isfinite(out["nll"]).all()
    assert flow.last_nfe == flow.cnf.last_nfe > 0
    xh, mask, n_dim = flow.continuous_state(batch)
    assert n_dim == flow.n_dim and not xh.requires_grad
    assert xh.shape[0] == 3 and xh.shape[-1] == flow.n_dim + flow.cnf.field.n_features
    assert xh[..., :n_dim].sum(1).abs().max() < 1e-8  # centred positions
    z = torch.zeros_like(xh)
    assert flow.base_log_prob(z, mask).shape == (3,)
    shape = flow.event_shape
    spec = DATASETS.get(dataset)
    assert shape == ((spec.n_nodes, spec.n_dim) if spec.kind == "particles" else None)
    samples = flow.sample(2, generator=torch.Generator().manual_seed(1))
    assert samples["failed"].shape == (2,) and samples["positions"].shape[0] == 2


@pytest.mark.parametrize("dataset", ["dw4"])
def test_nll_integrates_the_continuous_state(dataset: str) -> None:
    """`nll` = -(log p_base(z) + log det) of the CNF solve from `continuous_state` (the preprocessing is shared)."""
    torch.manual_seed(0)
    flow = _model(dataset, "enf")
    batch = _batch(dataset)
    xh, mask, _ = flow.continuous_state(batch)
    z, log_det, _ = flow.cnf(xh, mask, trace="exact")
    expected = -(flow.base_log_prob(z, mask) + log_det)
    torch.testing.assert_close(flow.nll(batch, trace="exact")["nll"], expected)
    x, log_q = flow.decode_with_log_prob(z, mask, trace="exact")
    torch.testing.assert_close(x, xh, rtol=1e-3, atol=1e-3)
