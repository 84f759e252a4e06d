"""Configuration: one nested dict, resolved in a fixed order so that every run records what it used.

Order (later wins): BASE < the data set's defaults < the model's defaults < the model's defaults for this
data set (`by_dataset`) < the data set's budget for the training size < a YAML file < `--set key=value` < the
command-line options that set one key (--seed, --epochs, --device, --objective).
Unknown keys are refused by name: every settable key appears in the resolved defaults. What each key accepts
is declared once, in SETTINGS below the defaults, and `validate` checks a resolved config against it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from enf.errors import EnfError
from enf.io import as_number

#: The string choices of the settings (the modules that use them import them from here).
ODE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "euler", "midpoint", "rk4", "heun2",
               "heun3", "explicit_adams", "implicit_adams", "fixed_adams")  # torchdiffeq's solvers
TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")
PAIRINGS = ("none", "ot", "aligned", "equivariant_ot")
OBJECTIVES = ("likelihood", "flow_matching")
CLIP_GRADS = ("none", "adaptive")
DTYPES = ("float32", "float64")
KERNEL_VARIANTS = ("standard", "lj13")
ACTNORM_POSITION_LOGDETS = ("all", "subspace")  # see enf/models/flows/actnorm.py

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
        "pairing": "equivariant_ot",  # none | ot (batch OT) | aligned (per pair) | equivariant_ot (align, then OT)
        "sigma": 0.0,                # width of the conditional path around the straight line
    },
    "train": {
        "objective": "likelihood",   # likelihood | flow_matching (simulation-free; see enf/training/flow_matching.py)
        "n_train": None,
        "n_valid": None,             # validate on the first N validation samples (costly validations); null: all
        "epochs": 100,
        "batch_size": 100,
        "eval_batch_size": 500,
        "lr": 5e-4,
        "weight_decay": 1e-12,
        "amsgrad": True,
        "ema": 0.0,                  # decay of an average of the weights validated and saved in their place; 0: off
        "eval_every": 1,
        "clip_grad": "none",         # none | adaptive (1.5 mean + 2 std of the last 50 clipped norms)
        "clip_queue_init": 3000.0,
        "augment_rotation": False,
        "seed": 0,
        "device": "auto",
        "dtype": "float32",
    },
}


@dataclass(frozen=True)
class Setting:
    """What one setting accepts: a type (an int where a number is expected), and bounds or choices."""

    kind: type                      # bool, int, float, str, list (of `items`) or dict (free-form)
    minimum: float | None = None    # inclusive lower bound (of each item, for lists)
    positive: bool = False          # strictly above zero
    choices: tuple[str, ...] = ()
    pattern: str | None = None      # a regular expression the whole string must match
    nullable: bool = False          # null (None) allowed, where the default is null
    items: type | None = None
    meaning: str = ""               # how the accepted strings are described in a refusal
    below: float | None = None      # exclusive upper bound (numbers)

    def accepts(self, value: Any) -> bool:
        """Whether `value` is allowed for this setting."""
        if value is None:
            return self.nullable
        if self.kind is list:
            return (isinstance(value, list) and self.items is not None
                    and all(Setting(self.items, self.minimum, self.positive).accepts(v) for v in value))
        if self.kind is dict:
            return isinstance(value, dict)
        if self.kind is bool or isinstance(value, bool):
            return self.kind is bool and isinstance(value, bool)
        if self.kind is str:
            return (isinstance(value, str) and (not self.choices or value in self.choices)
                    and (self.pattern is None or re.fullmatch(self.pattern, value) is not None))
        if self.kind is int and not isinstance(value, int):
            return False
        if self.kind is float:
            value = as_number(value)
            if value is None:
                return False
        return (math.isfinite(value) and (self.minimum is None or value >= self.minimum)
                and (not self.positive or value > 0) and (self.below is None or value < self.below))

    def describe(self) -> str:
        """What the setting accepts, for a refusal."""
        if self.kind is list:
            item = Setting(self.items or int, self.minimum, self.positive).describe()
            text = "a list of " + item.replace("an integer", "integers").replace("a number", "numbers")
        elif self.kind is dict:
            text = "a mapping"
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = f"one of {', '.join(self.choices)}" if self.choices else self.meaning or "a string"
        else:
            text = "an integer" if self.kind is int else "a number"
            if self.positive:
                text += " > 0"
            elif self.minimum is not None:
                text += f" >= {self.minimum:g}"
            if self.below is not None:
                text += f" and < {self.below:g}"
        return text + (" or null" if self.nullable else "")


#: One declaration per setting: every key of BASE, of the data sets' and the models' defaults, and the keys an
#: imported run records. The defaults themselves must pass (every data set and model is resolved in the tests).
SETTINGS: dict[str, Setting] = {
    "dataset": Setting(str, nullable=True),
    "model.name": Setting(str),
    "model.hidden_nf": Setting(int, minimum=1, nullable=True),  # null: a field without a network width
    "model.n_layers": Setting(int, minimum=1, nullable=True),
    "model.attention": Setting(bool),
    "model.tanh": Setting(bool),
    "model.coords_range": Setting(float, positive=True),
    "model.condition_time": Setting(bool),
    "model.self_edges": Setting(bool),
    "model.n_rbf": Setting(int, minimum=1),
    "model.rbf_max": Setting(float, positive=True),
    "model.rbf_width": Setting(float, positive=True),
    "model.mlp_hidden": Setting(list, items=int, minimum=1),
    "model.variant": Setting(str, choices=KERNEL_VARIANTS),
    "model.n_time_rbf": Setting(int, minimum=1),
    "model.actnorm": Setting(bool),                             # the QM9 flow's keys (enf/models/flows/molecules.py)
    "model.actnorm_position_logdet": Setting(str, choices=ACTNORM_POSITION_LOGDETS),
    "model.dequantizer_nf": Setting(int, minimum=1),
    "model.dequantizer_layers": Setting(int, minimum=1),
    "model.group_size": Setting(int, minimum=0),                # 0: solve a batch in one group
    "flow.method": Setting(str, choices=ODE_METHODS),
    "flow.rtol": Setting(float, positive=True),
    "flow.atol": Setting(float, positive=True),
    "flow.adjoint": Setting(bool),
    "flow.trace_train": Setting(str, choices=TRACES),
    "flow.trace_eval": Setting(str, choices=TRACES),
    "flow.noise": Setting(str, choices=NOISES),
    "flow.regularization": Setting(float, minimum=0),
    "flow.max_steps": Setting(int, minimum=1),
    "flow.compile": Setting(bool),
    "flow_matching.pairing": Setting(str, choices=PAIRINGS),
    "flow_matching.sigma": Setting(float, minimum=0),
    "train.objective": Setting(str, choices=OBJECTIVES),
    "train.n_train": Setting(int, minimum=1, nullable=True),    # null: the whole training split
    "train.n_valid": Setting(int, minimum=1, nullable=True),    # null: the whole validation split
    "train.epochs": Setting(int, minimum=0),                    # 0: the initial model is the selection
    "train.batch_size": Setting(int, minimum=1),
    "train.eval_batch_size": Setting(int, minimum=1),
    "train.lr": Setting(float, positive=True),
    "train.weight_decay": Setting(float, minimum=0),
    "train.amsgrad": Setting(bool),
    "train.ema": Setting(float, minimum=0, below=1),
    "train.eval_every": Setting(int, minimum=1),
    "train.clip_grad": Setting(str, choices=CLIP_GRADS),
    "train.clip_queue_init": Setting(float, positive=True),
    "train.augment_rotation": Setting(bool),
    "train.seed": Setting(int),
    "train.device": Setting(str, pattern=r"auto|cpu|mps|cuda(:[0-9]+)?", meaning="auto, cpu, mps, cuda or cuda:N"),
    "train.dtype": Setting(str, choices=DTYPES),
    "source": Setting(dict),                                    # provenance of an imported run
}


def deep_merge(base: dict[str, Any], override: dict[str, Any], *, strict: bool = False,
               where: str = "") -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base`; with `strict`, refuse keys `base` lacks.

    A section (a mapping) is never replaced by a single value, nor a single value by a section.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}{key}"
        if strict and key not in out:
            known = ", ".join(sorted(out)) if out else "none"
            raise EnfError(f"unknown config key {path!r} (known at this level: {known})")
        if key in out and isinstance(out[key], dict) != isinstance(value, dict) and SETTINGS.get(path) is None:
            if isinstance(out[key], dict):
                example = f"{path}.{min(out[key], default='KEY')}=VALUE"
                raise EnfError(f"config key {path!r} is a section, not a setting: set its keys (e.g. {example}), "
                               f"got {value!r}")
            raise EnfError(f"config key {path!r} is a setting, not a section, got {value!r}")
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
        if not all(parts):
            raise EnfError(f"--set {item!r}: empty key name")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise EnfError(f"--set {item!r}: an earlier --set gave {'.'.join(parts[:i + 1])!r} a single value")
        if isinstance(node.get(parts[-1]), dict):
            raise EnfError(f"--set {item!r}: an earlier --set set keys inside {key.strip()!r}")
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


def defaults(dataset: str, model: str, n_train: int | None = None) -> dict[str, Any]:
    """The config of `model` on `dataset` before any file or --set: every settable key with its default.

    BASE < the data set's defaults < the model's < the model's for this data set < the budget for `n_train`.
    """
    from enf.data.datasets import DATASETS
    from enf.models.networks import VECTOR_FIELDS

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
    return deep_merge(cfg, spec.budget(cfg["train"]["n_train"]))


def resolve(dataset: str, model: str, n_train: int | None = None, file_cfg: dict[str, Any] | None = None,
            sets: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full config for training `model` on `dataset` with `n_train` samples.

    `options` holds the settings of dedicated command-line options (--seed, --epochs, ...): they win over `sets`.
    """
    cfg = base = defaults(dataset, model, n_train)
    for source in (file_cfg or {}), (sets or {}), (options or {}):
        source = copy.deepcopy(source)
        for fixed in ("dataset",):
            if fixed in source and source[fixed] != dataset:
                raise EnfError(f"config key {fixed!r} = {source[fixed]!r} contradicts --{fixed} {dataset}")
            source.pop(fixed, None)
        if "model" in source and isinstance(source["model"], dict) and source["model"].get("name", model) != model:
            raise EnfError(f"config key 'model.name' = {source['model']['name']!r} contradicts --model {model}")
        cfg = deep_merge(cfg, source, strict=True)
    validate(cfg, base)
    return cfg


def complete(cfg: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a checkpoint's) with the keys declared since it was written added at their defaults.

    Keys it holds keep their values, so an older run rebuilds the model it trained.
    """
    model, train = cfg.get("model"), cfg.get("train")
    if not (isinstance(cfg.get("dataset"), str) and isinstance(model, dict) and isinstance(model.get("name"), str)
            and isinstance(train, dict)):
        return copy.deepcopy(cfg)  # not a config enf wrote: `validate` says what is wrong with it
    n_train = train.get("n_train")
    return _fill(cfg, defaults(cfg["dataset"], model["name"], n_train if isinstance(n_train, int) else None))


def _fill(tree: dict[str, Any], fallback: dict[str, Any]) -> dict[str, Any]:
    """A copy of `tree` with every key of `fallback` it lacks added (recursively)."""
    out = copy.deepcopy(tree)
    for key, value in fallback.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _fill(out[key], value)
    return out


def validate(cfg: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """Check every setting of a resolved config against its declaration in SETTINGS, naming the first bad one.

    With `defaults` (the config before the file and --set were merged), null is accepted only where the default
    is null; without them (a stored config), wherever the declaration allows it.
    """
    for section in ("model", "flow", "flow_matching", "train"):
        if not isinstance(cfg.get(section), dict):
            raise EnfError(f"config section {section!r} is missing or not a mapping, got {cfg.get(section)!r}")
    for key, value in _leaves(cfg):
        setting = SETTINGS.get(key)
        if setting is None:
            raise EnfError(f"unknown config key {key!r} (not declared in enf.config.SETTINGS)")
        if setting.nullable and defaults is not None and _lookup(defaults, key) is not None:
            setting = replace(setting, nullable=False)
        check_setting(key, value, setting)


def check_setting(key: str, value: Any, setting: Setting | None = None) -> None:
    """Refuse `value` for the dotted `key` unless its declaration (SETTINGS[key] by default) accepts it."""
    setting = setting or SETTINGS[key]
    if not setting.accepts(value):
        raise EnfError(f"{key} must be {setting.describe()}, got {value!r}")


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every setting; a section declared as a free-form mapping is one leaf."""
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and SETTINGS.get(path) is None:
            out += _leaves(value, f"{path}.")
        else:
            out.append((path, value))
    return out


def config_hash(cfg: dict[str, Any], ignore: tuple[str, ...] = ("train.device",)) -> str:
    """A short hash of the settings that define a run (device excluded: a run may resume elsewhere)."""
    cfg = copy.deepcopy(cfg)
    for dotted in ignore:
        section, key = dotted.split(".")
        cfg.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
