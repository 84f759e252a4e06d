"""The data sets the flows are trained on: their shapes, default settings, budgets, and validated loading."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from enf.errors import EnfError
from enf.io import load_npz
from enf.registry import Registry

SPLITS = ("train", "valid", "test")
#: The settings a training budget consists of (the workflow's `experiments.<set>.budgets` hold these).
BUDGET_KEYS = ("epochs", "eval_every", "batch_size")


@dataclass(frozen=True)
class DatasetSpec:
    """Shape and protocol facts of one data set.

    `budgets` maps a training size to settings (epochs, eval cadence, batch size) from the protocol;
    a size between two listed ones takes the settings of the next smaller listed size. These and the
    `train` defaults are the protocol's budgets: the workflow's paper configuration takes them from here.
    """

    name: str
    kind: str                      # "particles" (positions only) or "molecules" (positions + atom types)
    n_nodes: int                   # particles, or the maximum number of atoms
    n_dim: int
    n_features: int = 0
    defaults: dict[str, Any] = field(default_factory=dict)
    budgets: dict[int, dict[str, Any]] = field(default_factory=dict)

    def budget(self, n_train: int | None) -> dict[str, Any]:
        """The settings that `budgets` gives training on `n_train` samples, as a config section {'train': ...}."""
        if n_train is None or not self.budgets:
            return {}
        sizes = sorted(self.budgets)
        i = max(bisect.bisect_right(sizes, n_train) - 1, 0)
        return {"train": dict(self.budgets[sizes[i]])}

    def protocol_budget(self, n_train: int | None) -> dict[str, Any]:
        """The protocol's training budget for `n_train` samples (None: the whole split): the keys of BUDGET_KEYS
        that this data set declares, from its `train` defaults and its `budgets`."""
        train = {**self.defaults.get("train", {}), **self.budget(n_train).get("train", {})}
        return {key: train[key] for key in BUDGET_KEYS if key in train}


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def protocol_budgets(dataset: str, sizes: list[str]) -> dict[str, dict[str, Any]]:
    """{size: the protocol's training budget} for training sizes as the workflow writes them ('100', 'all'): the
    workflow's configurations and tables take the protocol's budgets from here instead of repeating them."""
    spec = DATASETS.get(dataset)
    return {str(n): spec.protocol_budget(None if str(n) == "all" else int(n)) for n in sizes}


def _register(spec: DatasetSpec) -> None:
    DATASETS.register(spec.name)(spec)


_PARTICLE_MODEL = {"hidden_nf": 32, "n_layers": 3}
_QM9_MODEL = {"hidden_nf": 64, "n_layers": 6}
#: The QM9 flow around the field (enf/models/flows/molecules.py): the dequantiser's EGNN q-network, ActNorm (its
#: positions' log-determinant as the authors count it) and the molecules solved together per group.
_MOLECULE_FLOW = {"dequantizer_nf": 64, "dequantizer_layers": 4, "actnorm": True, "actnorm_position_logdet": "all",
                  "group_size": 8}

_register(DatasetSpec(
    "dw4", "particles", 4, 2,
    defaults={"model": _PARTICLE_MODEL, "train": {"n_train": 1000, "batch_size": 100}},
    budgets={100: {"epochs": 1000, "eval_every": 20}, 1000: {"epochs": 300, "eval_every": 5},
             10_000: {"epochs": 50, "eval_every": 1}, 100_000: {"epochs": 6, "eval_every": 1}},
))
_register(DatasetSpec(
    "lj13", "particles", 13, 3,
    # adjoint gradients: direct back-propagation keeps every solver step's graph, which for LJ13 is GBs at
    # initialisation and grows with the function evaluations during training
    defaults={"model": _PARTICLE_MODEL,
              "flow": {"trace_eval": "hutchinson", "adjoint": True},
              "train": {"n_train": 1000, "batch_size": 100}},
    budgets={10: {"epochs": 500, "eval_every": 10, "batch_size": 10},
             100: {"epochs": 1000, "eval_every": 25, "batch_size": 100},
             1000: {"epochs": 300, "eval_every": 5, "batch_size": 100},
             10_000: {"epochs": 50, "eval_every": 1, "batch_size": 100}},
))
_register(DatasetSpec(
    "qm9_positional", "particles", 19, 3,
    defaults={"model": _QM9_MODEL,
              "flow": {"trace_eval": "hutchinson", "noise": "gaussian", "regularization": 1e-3, "adjoint": True},
              "train": {"epochs": 1000, "batch_size": 128, "lr": 2e-4, "clip_grad": "adaptive",
                        "clip_queue_init": 1e30}},
))
_register(DatasetSpec(
    "qm9", "molecules", 29, 3, n_features=6,
    defaults={"model": {**_QM9_MODEL, **_MOLECULE_FLOW},
              "flow": {"trace_eval": "hutchinson", "noise": "gaussian", "regularization": 1e-3, "adjoint": True},
              "train": {"epochs": 100, "batch_size": 128, "lr": 2e-4, "clip_grad": "adaptive",
                        "clip_queue_init": 3000.0}},
))

MOLECULE_ARRAYS = ("positions", "atom_mask", "one_hot", "charges")


def load_split(spec: DatasetSpec, path: str | Path, n: int | None = None,
               dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Load one split file as tensors, checking shapes and finiteness; keep the first `n` samples."""
    path = Path(path)
    required = ("positions",) if spec.kind == "particles" else MOLECULE_ARRAYS
    arrays = load_npz(path, required=required)
    pos = arrays["positions"]
    if spec.kind == "particles":
        expected = (spec.n_nodes, spec.n_dim)
        if pos.ndim != 3 or pos.shape[1:] != expected:
            raise EnfError(f"{path}: 'positions' has shape {pos.shape}; {spec.name} needs (samples, "
                           f"{expected[0]}, {expected[1]})")
    else:
        if pos.ndim != 3 or pos.shape[2] != spec.n_dim or pos.shape[1] > spec.n_nodes:
            raise EnfError(f"{path}: 'positions' has shape {pos.shape}; {spec.name} needs (molecules, "
                           f"<= {spec.n_nodes}, {spec.n_dim})")
        for key, shape in (("atom_mask", pos.shape[:2]), ("one_hot", (*pos.shape[:2], 5)),
                           ("charges", pos.shape[:2])):
            arr = arrays[key]
            if arr.shape[:len(shape)] != shape or arr.size != int(np.prod(shape)):
                raise EnfError(f"{path}: {key!r} has shape {arr.shape}, expected {shape}")
    if pos.shape[0] == 0:
        raise EnfError(f"{path}: holds no samples")
    if n is not None:
        if n > pos.shape[0]:
            raise EnfError(f"{path}: asked for {n} samples but the file holds {pos.shape[0]}")
        arrays = {k: v[:n] for k, v in arrays.items() if v.ndim > 0 and v.shape[0] == pos.shape[0]}
        pos = arrays["positions"]
    bad = ~np.isfinite(pos).reshape(pos.shape[0], -1).all(1)
    if bad.any():
        raise EnfError(f"{path}: {int(bad.sum())} sample(s) have NaN or infinite positions "
                       f"(first at row {int(np.argmax(bad))})")
    out = {"positions": torch.as_tensor(pos, dtype=dtype)}
    if spec.kind == "molecules":
        out["mask"] = torch.as_tensor(arrays["atom_mask"].reshape(pos.shape[:2]), dtype=dtype)
        out["one_hot"] = torch.as_tensor(arrays["one_hot"].reshape(*pos.shape[:2], 5), dtype=dtype)
        out["charges"] = torch.as_tensor(arrays["charges"].reshape(pos.shape[:2]), dtype=dtype)
    return out


def split_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.npz"
