"""Build a density model from a resolved config: vector field (by name) -> CNF -> data-set wrapper."""

from __future__ import annotations

from typing import Any

from enf.data.datasets import DATASETS
from enf.models.flows.base import DensityModel
from enf.models.flows.cnf import CNF
from enf.models.flows.particles import ParticleFlow
from enf.models.networks import VECTOR_FIELDS  # importing the package registers every vector field

__all__ = ["VECTOR_FIELDS", "build_model"]

ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def build_cnf(cfg: dict[str, Any], n_dim: int, n_features: int) -> CNF:
    """The CNF of `cfg['flow']` around the vector field named by `cfg['model']['name']`."""
    field = VECTOR_FIELDS.get(cfg["model"]["name"])(n_dim, n_features, cfg["model"])
    flow = cfg["flow"]
    options = {"max_num_steps": int(flow["max_steps"])} if flow["method"] in ADAPTIVE_SOLVERS else None
    return CNF(field, method=flow["method"], rtol=float(flow["rtol"]), atol=float(flow["atol"]),
               adjoint=bool(flow["adjoint"]), trace=flow["trace_train"], noise=flow["noise"],
               regularization=float(flow["regularization"]), options=options, compile=bool(flow["compile"]))


def build_model(cfg: dict[str, Any]) -> DensityModel:
    """The density model for `cfg['dataset']`: a ParticleFlow, or the QM9 molecule flow."""
    spec = DATASETS.get(cfg["dataset"])
    if spec.kind == "particles":
        return ParticleFlow(build_cnf(cfg, spec.n_dim, 0), spec.n_nodes, spec.n_dim)
    from enf.models.flows.molecules import build_molecule_flow

    return build_molecule_flow(cfg, spec, build_cnf(cfg, spec.n_dim, spec.n_features))
