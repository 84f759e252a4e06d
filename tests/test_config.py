"""enf.config: the order in which settings are merged, refusals that name their key, the QM9 flow's settings,
stored configs of earlier versions, and the command line's and workflow's choices against the declarations."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from enf.config import (
    BASE,
    OBJECTIVES,
    PAIRINGS,
    SETTINGS,
    TRACES,
    complete,
    deep_merge,
    defaults,
    parse_set,
    resolve,
    validate,
)
from enf.data.datasets import DATASETS
from enf.errors import EnfError
from enf.models import VECTOR_FIELDS, build_model, checkpoints

ROOT = Path(__file__).resolve().parents[1]


# -- merge order -------------------------------------------------------------------------------------------------
# (dataset, model, n_train, key, the value after each level is merged): BASE < data set < model < the model's
# settings for this data set < the budget for n_train. Together the rows see every level override the one below;
# `resolve` must end at the last value.
LAYERS = [
    ("qm9", "gnf", None, "train.lr", [5e-4, 2e-4, 1e-3, 5e-4]),                     # BASE, qm9, gnf, gnf on qm9
    ("qm9_positional", "simple_dynamics", None, "flow.regularization", [0.0, 1e-3, 0.0]),  # BASE, data set, model
    ("lj13", "kernel_dynamics", None, "model.hidden_nf", [None, 32, None]),         # nested: not in BASE
    ("lj13", "kernel_dynamics", None, "model.variant", [None, None, "standard", "lj13"]),
    ("lj13", "enf", 10, "train.batch_size", [100, 100, 100, 100, 10]),               # ... < budget for n = 10
    ("dw4", "enf", 100, "train.epochs", [100, 100, 100, 100, 1000]),
]


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


@pytest.mark.parametrize("dataset, model, n_train, key, levels", LAYERS, ids=[row[3] for row in LAYERS])
def test_registered_defaults_merge_in_their_documented_order(dataset: str, model: str, n_train: int | None,
                                                             key: str, levels: list[Any]) -> None:
    model_defaults = dict(VECTOR_FIELDS.defaults(model))
    by_dataset = model_defaults.pop("by_dataset", {}).get(dataset, {})
    stages = [BASE, DATASETS.get(dataset).defaults, model_defaults, by_dataset,
              DATASETS.get(dataset).budget(n_train)]
    cfg: dict[str, Any] = {}
    seen = []
    for stage in stages[:len(levels)]:
        cfg = deep_merge(cfg, stage)
        seen.append(_get(cfg, key))
    assert seen == levels
    assert _get(defaults(dataset, model, n_train), key) == levels[-1] == _get(resolve(dataset, model, n_train), key)


@pytest.mark.parametrize("key, default, file_value, set_value, option_value", [
    ("train.epochs", 1000, 7, 8, 9),
    ("train.seed", 0, 1, 2, 3),
    ("model.hidden_nf", 32, 16, 8, None),
    ("flow.trace_eval", "exact", "hutchinson", "exact", None),
    ("flow_matching.sigma", 0.0, 0.1, 0.2, None),
])
def test_file_then_set_then_options_override_the_defaults(key: str, default: Any, file_value: Any, set_value: Any,
                                                         option_value: Any) -> None:
    """defaults < a config file < --set < the options that set one key (--seed, --epochs, ...)."""
    section, name = key.split(".")
    file_cfg = {section: {name: file_value}}
    sets = parse_set([f"{key}={set_value}"])
    options = {section: {name: option_value}} if option_value is not None else None
    assert _get(resolve("dw4", "enf", 100), key) == default
    assert _get(resolve("dw4", "enf", 100, file_cfg), key) == file_value
    assert _get(resolve("dw4", "enf", 100, file_cfg, sets), key) == set_value
    if options:
        assert _get(resolve("dw4", "enf", 100, file_cfg, sets, options), key) == option_value


def test_a_file_keeps_the_keys_it_does_not_set() -> None:
    cfg = resolve("lj13", "enf", 10, {"train": {"lr": 1e-3}, "model": {"n_layers": 2}})
    assert cfg["train"]["batch_size"] == 10 and cfg["train"]["epochs"] == 500   # the budget of n = 10 stays
    assert cfg["model"]["hidden_nf"] == 32 and cfg["model"]["attention"] is True
    assert cfg["flow"] == resolve("lj13", "enf", 10)["flow"]


def test_dataset_and_model_cannot_be_contradicted() -> None:
    with pytest.raises(EnfError, match="'dataset'"):
        resolve("dw4", "enf", file_cfg={"dataset": "lj13"})
    with pytest.raises(EnfError, match="'model.name'"):
        resolve("dw4", "enf", sets=parse_set(["model.name=gnf"]))


# -- refusals ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset, model, item, key", [
    ("dw4", "enf", "train.lrr=1", "train.lrr"),                          # unknown key
    ("dw4", "enf", "trian.lr=1", "trian"),                               # unknown section
    ("dw4", "enf", "model.group_size=4", "model.group_size"),            # a QM9 key elsewhere
    ("dw4", "enf", "train.epochs=ten", "train.epochs"),                  # wrong type
    ("dw4", "enf", "train.epochs=1.5", "train.epochs"),
    ("dw4", "enf", "train.amsgrad=1", "train.amsgrad"),
    ("dw4", "enf", "model.mlp_hidden=[1, x]", "model.mlp_hidden"),
    ("dw4", "enf", "train.lr=0", "train.lr"),                            # out of range
    ("dw4", "enf", "train.batch_size=0", "train.batch_size"),
    ("dw4", "enf", "flow.rtol=-1e-3", "flow.rtol"),
    ("dw4", "enf", "flow.trace_eval=approximate", "flow.trace_eval"),    # not one of the choices
    ("dw4", "enf", "flow.method=euler2", "flow.method"),
    ("dw4", "enf", "train.device=gpu", "train.device"),
    ("dw4", "enf", "train.epochs=null", "train.epochs"),                 # null where not nullable
    ("dw4", "enf", "model.hidden_nf=null", "model.hidden_nf"),           # nullable, but not where set
    ("dw4", "enf", "train=3", "train"),                                  # a section given a value
    ("qm9", "enf", "model.group_size=-1", "model.group_size"),
    ("qm9", "enf", "model.dequantizer_nf=0", "model.dequantizer_nf"),
    ("qm9", "enf", "model.dequantizer_layers=two", "model.dequantizer_layers"),
    ("qm9", "enf", "model.actnorm=yes please", "model.actnorm"),
    ("qm9", "enf", "model.actnorm_position_logdet=some", "model.actnorm_position_logdet"),
    ("qm9", "enf", "model.dequantizer_nf=null", "model.dequantizer_nf"),
])
def test_a_refusal_names_its_key(dataset: str, model: str, item: str, key: str) -> None:
    with pytest.raises(EnfError, match=rf"(?<![\w.]){key}(?![\w])"):
        resolve(dataset, model, sets=parse_set([item]))
    with pytest.raises(EnfError, match=rf"(?<![\w.]){key}(?![\w])"):  # the same from a config file
        resolve(dataset, model, file_cfg=parse_set([item]))


def test_null_is_accepted_where_the_default_is_null() -> None:
    assert resolve("dw4", "kernel_dynamics", sets=parse_set(["model.hidden_nf=null"]))["model"]["hidden_nf"] is None
    assert resolve("qm9", "enf", sets=parse_set(["train.n_train=null"]))["train"]["n_train"] is None


def test_every_default_passes_its_declaration() -> None:
    """Each data set's and model's resolved defaults validate, and the declared solvers are torchdiffeq's."""
    from torchdiffeq._impl.odeint import SOLVERS

    from enf.config import ODE_METHODS

    for dataset in DATASETS.names():
        for model in VECTOR_FIELDS.names():
            for n_train in (None, 10, 1000):
                resolve(dataset, model, n_train)  # validates against SETTINGS
    assert set(ODE_METHODS) <= set(SOLVERS)
    assert all(setting.kind in (bool, int, float, str, list, dict) for setting in SETTINGS.values())


def test_every_declaration_is_a_settable_key() -> None:
    """No declaration without a default somewhere (BASE, a data set, a model) except an imported run's `source`."""
    keys = set()
    for dataset in DATASETS.names():
        for model in VECTOR_FIELDS.names():
            cfg = defaults(dataset, model)
            stack = [("", cfg)]
            while stack:
                prefix, node = stack.pop()
                for k, v in node.items():
                    if isinstance(v, dict):
                        stack.append((f"{prefix}{k}.", v))
                    else:
                        keys.add(f"{prefix}{k}")
    assert set(SETTINGS) - keys == {"source"}


# -- the QM9 flow's settings -------------------------------------------------------------------------------------
MOLECULE_DEFAULTS = {"dequantizer_nf": 64, "dequantizer_layers": 4, "actnorm": True, "actnorm_position_logdet": "all",
                     "group_size": 8}


def test_the_qm9_flows_settings_are_declared_with_their_defaults() -> None:
    cfg = resolve("qm9", "enf")
    assert {k: cfg["model"][k] for k in MOLECULE_DEFAULTS} == MOLECULE_DEFAULTS
    model = build_model(cfg)
    assert model.group_size == 8 and model.actnorm is not None and model.actnorm.position_logdet == "all"
    egnn = model.dequantizer.net.egnn
    assert len(egnn.layers) == 4 and egnn.embedding.out_features == 64


def test_the_qm9_flows_settings_can_be_set() -> None:
    sets = ["model.dequantizer_nf=8", "model.dequantizer_layers=1", "model.actnorm=false", "model.group_size=0",
            "model.hidden_nf=8", "model.n_layers=1"]
    cfg = resolve("qm9", "enf", sets=parse_set(sets))
    model = build_model(cfg)
    assert model.group_size is None and model.actnorm is None
    egnn = model.dequantizer.net.egnn
    assert len(egnn.layers) == 1 and egnn.embedding.out_features == 8
    cfg = resolve("qm9", "enf", file_cfg={"model": {"actnorm_position_logdet": "subspace", "group_size": 3}})
    model = build_model(cfg)
    assert model.actnorm.position_logdet == "subspace" and model.group_size == 3


# -- stored configs ------------------------------------------------------------------------------------------------
def _earlier_qm9_config() -> dict[str, Any]:
    """A QM9 run's config as enf wrote it before the QM9 flow's settings were declared (smaller, for speed)."""
    cfg = resolve("qm9", "enf", sets=parse_set(["model.hidden_nf=8", "model.n_layers=1"]))
    for key in MOLECULE_DEFAULTS:
        del cfg["model"][key]
    return cfg


def test_complete_adds_only_what_a_stored_config_lacks() -> None:
    old = _earlier_qm9_config()
    filled = complete(old)
    assert {k: filled["model"][k] for k in MOLECULE_DEFAULTS} == MOLECULE_DEFAULTS
    assert filled["model"]["hidden_nf"] == 8 and filled["train"] == old["train"]
    validate(filled)
    assert complete(resolve("dw4", "enf", 100)) == resolve("dw4", "enf", 100)
    with pytest.raises(EnfError, match="model.bogus"):  # keys it holds are kept, and checked, as they are
        validate(complete({**old, "model": {**old["model"], "bogus": 1}}))


def test_a_checkpoint_without_the_newer_settings_loads(tmp_path: Path) -> None:
    cfg = resolve("qm9", "enf", sets=parse_set(["model.hidden_nf=8", "model.n_layers=1"]))
    model = build_model(cfg)
    model.set_size_distribution(torch.arange(30.0))
    path = tmp_path / "checkpoint.pt"
    checkpoints.save(path, {"format": checkpoints.FORMAT, "config": _earlier_qm9_config(),
                            "model_state": model.state_dict()})
    loaded, payload = checkpoints.load_model(path)
    assert payload["config"]["model"]["group_size"] == 8 and loaded.group_size == 8
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


def test_a_committed_paper_protocol_checkpoint_loads() -> None:
    paths = sorted((ROOT / "reproduction" / "paper_protocol").glob("*/*/*/*/checkpoint.pt"))
    if not paths:
        pytest.skip("no committed checkpoints")
    model, payload = checkpoints.load_model(paths[0])
    assert payload["config"]["dataset"] in DATASETS.names()


# -- one list of choices -------------------------------------------------------------------------------------------
def _options(command: str) -> dict[str, argparse.Action]:
    from enf.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {opt: action for action in sub.choices[command]._actions for opt in action.option_strings}


def test_the_command_lines_choices_are_the_declared_ones() -> None:
    train, evaluate = _options("train"), _options("evaluate")
    assert tuple(train["--objective"].choices) == OBJECTIVES == SETTINGS["train.objective"].choices
    assert tuple(evaluate["--trace"].choices) == TRACES == SETTINGS["flow.trace_eval"].choices
    assert tuple(evaluate["--boltzmann-trace"].choices) == TRACES == SETTINGS["flow.trace_train"].choices


def test_the_workflow_schema_allows_the_declared_choices() -> None:
    """The workflow's schema cannot import enf: its copies of enf's choices and defaults are pinned here."""
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    defs, props = schema["$defs"], schema["properties"]
    assert defs["evaluate"]["properties"]["trace"]["enum"] == [*TRACES, None]
    assert tuple(props["boltzmann"]["properties"]["trace"]["enum"]) == TRACES
    fm = props["flow_matching"]["properties"]
    assert tuple(fm["pairing"]["enum"]) == PAIRINGS
    assert {key: fm[key]["default"] for key in BASE["flow_matching"]} == BASE["flow_matching"]
    assert sorted(props["experiments"]["propertyNames"]["enum"]) == DATASETS.names()
