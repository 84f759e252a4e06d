"""Configuration: one nested dict, resolved in a fixed order so that every run records what it used.

Order (later wins): BASE < the data set's defaults < the model's defaults < the model's defaults for this
data set (`by_dataset`) < the data set's budget for the training size < a YAML file < `--set key=value`.
Unknown keys are refused by name: every settable key appears in the resolved defaults.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from enf.errors import EnfError

BASE: dict[str, Any] = {
    "dataset": None,
    "model": {"name": "enf"},
    "flow": {
        "method": "dopri5",
        "rtol": 1e-4,
        "atol": 1e-4,
        "adjoint": False,            # direct back-propagation is 1.3-1.4x faster at these sizes (performance.md)
        "trace_train": "hutchinson",
        "trace_eval": "exact",
        "noise": "rademacher",
        "regularization": 0.0,       # weight of kinetic energy + Jacobian Frobenius norm
        "max_steps": 5000,           # solver steps per solve before it counts as exploded
        "compile": False,            # torch.compile the training evaluation (2-3x faster, slow first compile)
    },
    "flow_matching": {
        "pairing": "equivariant_ot",  # none | ot (batch OT) | equivariant_ot (align over perms/rotations first)
        "sigma": 0.0,                # width of the conditional path around the straight line
    },
    "train": {
        "objective": "likelihood",   # likelihood | flow_matching (simulation-free; see enf/flow_matching.py)
        "n_train": None,
        "epochs": 100,
        "batch_size": 100,
        "eval_batch_size": 500,
        "lr": 5e-4,
        "weight_decay": 1e-12,
        "amsgrad": True,
        "eval_every": 1,
        "clip_grad": "none",         # none | adaptive (1.5 mean + 2 std of the last 50 clipped norms)
        "clip_queue_init": 3000.0,
        "augment_rotation": False,
        "seed": 0,
        "device": "auto",
        "dtype": "float32",
    },
}


def deep_merge(base: dict[str, Any], override: dict[str, Any], *, strict: bool = False,
               where: str = "") -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base`; with `strict`, refuse keys `base` lacks."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}{key}"
        if strict and key not in out:
            known = ", ".join(sorted(out)) if out else "none"
            raise EnfError(f"unknown config key {path!r} (known at this level: {known})")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, strict=strict, where=f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """Turn ['train.lr=1e-3', 'model.attention=false'] into a nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise EnfError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise EnfError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise EnfError(f"{path}: not valid YAML ({problem}{where})") from None
    if not isinstance(data, dict):
        raise EnfError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def resolve(dataset: str, model: str, n_train: int | None = None, file_cfg: dict[str, Any] | None = None,
            sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full config for training `model` on `dataset` with `n_train` samples."""
    from enf.data.datasets import DATASETS
    from enf.models import VECTOR_FIELDS

    spec = DATASETS.get(dataset)
    model_defaults = copy.deepcopy(VECTOR_FIELDS.defaults(model))
    by_dataset = model_defaults.pop("by_dataset", {})
    cfg = deep_merge(BASE, spec.defaults)
    cfg = deep_merge(cfg, model_defaults)
    cfg = deep_merge(cfg, by_dataset.get(dataset, {}))
    cfg["dataset"] = dataset
    cfg["model"]["name"] = model
    if n_train is not None:
        cfg["train"]["n_train"] = int(n_train)
    cfg = deep_merge(cfg, spec.budget(cfg["train"]["n_train"]))
    for source in (file_cfg or {}), (sets or {}):
        source = copy.deepcopy(source)
        for fixed in ("dataset",):
            if fixed in source and source[fixed] != dataset:
                raise EnfError(f"config key {fixed!r} = {source[fixed]!r} contradicts --{fixed} {dataset}")
            source.pop(fixed, None)
        if "model" in source and source["model"].get("name", model) != model:
            raise EnfError(f"config key 'model.name' = {source['model']['name']!r} contradicts --model {model}")
        cfg = deep_merge(cfg, source, strict=True)
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Check value ranges that would otherwise fail deep inside torch."""
    from enf.flows.cnf import NOISES, TRACES

    flow, train = cfg["flow"], cfg["train"]
    for key in ("trace_train", "trace_eval"):
        if flow[key] not in TRACES:
            raise EnfError(f"flow.{key} must be one of {TRACES}, got {flow[key]!r}")
    if flow["noise"] not in NOISES:
        raise EnfError(f"flow.noise must be one of {NOISES}, got {flow['noise']!r}")
    for key in ("rtol", "atol"):
        if not float(flow[key]) > 0:
            raise EnfError(f"flow.{key} must be positive, got {flow[key]!r}")
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every"):
        if not isinstance(train[key], int) or train[key] < (0 if key == "epochs" else 1):
            raise EnfError(f"train.{key} must be a positive integer, got {train[key]!r}")
    if train["n_train"] is not None and (not isinstance(train["n_train"], int) or train["n_train"] < 1):
        raise EnfError(f"train.n_train must be a positive integer, got {train['n_train']!r}")
    if train["objective"] not in ("likelihood", "flow_matching"):
        raise EnfError(f"train.objective must be 'likelihood' or 'flow_matching', got {train['objective']!r}")
    if train["clip_grad"] not in ("none", "adaptive"):
        raise EnfError(f"train.clip_grad must be 'none' or 'adaptive', got {train['clip_grad']!r}")
    if train["dtype"] not in ("float32", "float64"):
        raise EnfError(f"train.dtype must be float32 or float64, got {train['dtype']!r}")
    if not float(train["lr"]) > 0:
        raise EnfError(f"train.lr must be positive, got {train['lr']!r}")


def config_hash(cfg: dict[str, Any], ignore: tuple[str, ...] = ("train.device",)) -> str:
    """A short hash of the settings that define a run (device excluded: a run may resume elsewhere)."""
    cfg = copy.deepcopy(cfg)
    for dotted in ignore:
        section, key = dotted.split(".")
        cfg.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
