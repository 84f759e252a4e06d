"""Import of the authors' released QM9 E-NF weights (vgsatorras/en_flows) into enf's QM9 model.

Their files are two `torch.save` state dicts: the flow (`transformations.0.*` = ActNorm,
`transformations.1.*` = FFJORD around the EGNN dynamics, layers named `gcl_{i}`) and the dequantiser
(`net_fn.egnn.*` = the q-network's EGNN), plus the training arguments (`args.json`). Every tensor is mapped
by name onto enf's `MoleculeFlow`; anything that does not fit is refused with the full list of problems.
p(M) is the authors' size histogram of the QM9 training split (from their `qm9/analyze.py`), which equals
the histogram of the protocol's training split.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import Tensor

from enf.errors import EnfError
from enf.io import atomic_path, read_json, sha256_file, write_json
from enf.models import checkpoints

if TYPE_CHECKING:
    from enf.models.flows.molecules import MoleculeFlow

SOURCE_REPOSITORY = "https://github.com/vgsatorras/en_flows"
SOURCE_FOLDER = "outputs/en_flows_pretrained"
SOURCE_COMMIT = "fb7e33f"
LICENSE = "MIT (Copyright (c) 2021 vgsatorras, ehoogeboom)"

#: Number of QM9 training molecules (protocol split) with M atoms, as recorded in the authors' code.
AUTHORS_SIZE_HISTOGRAM: dict[int, int] = {
    3: 1, 4: 4, 5: 5, 6: 9, 7: 16, 8: 49, 9: 124, 10: 362, 11: 807, 12: 1689, 13: 3060, 14: 5136,
    15: 7796, 16: 10644, 17: 13025, 18: 13364, 19: 13832, 20: 9482, 21: 9970, 22: 3393, 23: 4848,
    24: 539, 25: 1506, 26: 48, 27: 266, 29: 25,
}

#: Training options of theirs that enf's QM9 model reproduces only at these values.
REQUIRED_ARGS: dict[str, Any] = {
    "dataset": "qm9", "model": "egnn_dynamics", "dequantization": "argmax_variational",
    "x_aggregation": "sum", "conditioning": [], "context_node_nf": 0,
}
#: Options that must be present and become enf config values (their key -> enf's model key).
MODEL_ARGS = {"nf": "hidden_nf", "n_layers": "n_layers", "attention": "attention", "tanh": "tanh",
              "condition_time": "condition_time", "actnorm": "actnorm"}

_FLOW_RULES: tuple[tuple[str, str], ...] = (
    (r"^transformations\.0\.(x_log_s|h_t|h_log_s|initialized)$", r"actnorm.\1"),
    (r"^transformations\.1\.odefunc\.dynamics\.egnn\.gcl_(\d+)\.(.+)$", r"cnf.dynamics.field.egnn.layers.\1.\2"),
    (r"^transformations\.1\.odefunc\.dynamics\.egnn\.(embedding|embedding_out)\.(weight|bias)$",
     r"cnf.dynamics.field.egnn.\1.\2"),
)
_DEQUANTIZER_RULES: tuple[tuple[str, str], ...] = (
    (r"^net_fn\.egnn\.gcl_(\d+)\.(.+)$", r"dequantizer.net.egnn.layers.\1.\2"),
    (r"^net_fn\.egnn\.(embedding|embedding_out)\.(weight|bias)$", r"dequantizer.net.egnn.\1.\2"),
)
#: Their integration times: checked (data t=0 to latent t=1), not loaded (enf's CNF always integrates 0 -> 1).
_TIME_TENSORS = {"transformations.1.int_time": (0.0, 1.0), "transformations.1.inv_int_time": (1.0, 0.0)}
#: The files `import_en_flows` writes in its run directory.
RUN_FILES = ("checkpoint.pt", "config.yaml", "import.json")
#: enf tensors that no released file holds: p(M) is set from the histogram above.
_NOT_IMPORTED = ("size_probs",)


def map_name(name: str, rules: tuple[tuple[str, str], ...]) -> str | None:
    """enf's name for one of their tensor names, or None when no rule covers it."""
    for pattern, target in rules:
        if re.match(pattern, name):
            return re.sub(pattern, target, name)
    return None


def _actnorm_rules_when_absent(rules: tuple[tuple[str, str], ...], actnorm: bool) -> tuple[tuple[str, str], ...]:
    if actnorm:
        return rules
    # Without ActNorm their FFJORD is transformations.0.
    return tuple((p.replace(r"transformations\.1", r"transformations\.0"), t) for p, t in rules[1:])


def load_state_dict(path: str | Path, what: str) -> dict[str, Tensor]:
    """torch.load of a released state dict (weights only), refusing anything that is not name -> tensor."""
    path = Path(path)
    if not path.is_file():
        raise EnfError(f"{path}: {what} file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or truncated files
        raise EnfError(f"{path}: not a readable torch state dict ({checkpoints.load_error_reason(err)})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise EnfError(f"{path}: expected a state dict (tensor name -> tensor), got {type(state).__name__}")
    return dict(state)


def config_from_args(args: dict[str, Any], args_path: str | Path = "args.json") -> dict[str, Any]:
    """enf's resolved QM9 config for their training arguments; refuse options enf's model does not have."""
    from enf.config import resolve

    problems = []
    for key, value in REQUIRED_ARGS.items():
        if key in args and args[key] != value:
            problems.append(f"{key} = {args[key]!r} (enf imports only {value!r})")
    missing = [key for key in MODEL_ARGS if key not in args]
    if missing:
        problems.append(f"missing option(s) {missing}")
    for key in ("attention", "tanh", "condition_time", "actnorm"):
        if key in args and not isinstance(args[key], bool):
            problems.append(f"{key} = {args[key]!r} (expected true or false)")
    for key in ("nf", "n_layers"):
        if key in args and (not isinstance(args[key], int) or args[key] < 1):
            problems.append(f"{key} = {args[key]!r} (expected a positive integer)")
    if problems:
        raise EnfError(f"{args_path}: model options enf cannot reproduce: " + "; ".join(problems))
    sets: dict[str, Any] = {"model": {MODEL_ARGS[k]: args[k] for k in MODEL_ARGS}}
    if isinstance(args.get("lr"), float):
        sets["train"] = {"lr": args["lr"]}
    return resolve("qm9", "enf", sets=sets)


def map_state(flow: dict[str, Tensor], dequantizer: dict[str, Tensor], expected: dict[str, Tensor],
              actnorm: bool = True) -> tuple[dict[str, Tensor], list[str]]:
    """Their two state dicts as one enf state dict, plus every problem found (empty when it all fits)."""
    problems: list[str] = []
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    flow_rules = _actnorm_rules_when_absent(_FLOW_RULES, actnorm)
    time_tensors = _TIME_TENSORS if actnorm else {
        k.replace("transformations.1", "transformations.0"): v for k, v in _TIME_TENSORS.items()}
    unexpected: list[str] = []
    for source, state, rules in (("flow", flow, flow_rules), ("dequantizer", dequantizer, _DEQUANTIZER_RULES)):
        for name, tensor in state.items():
            if source == "flow" and name in time_tensors:
                want = torch.tensor(time_tensors[name], dtype=torch.float64)
                if tuple(tensor.shape) != tuple(want.shape) or not torch.equal(tensor.double(), want):
                    problems.append(f"{source}: {name} = {tensor.tolist()} (enf integrates data t=0 to latent "
                                    f"t=1, expected {want.tolist()})")
                continue
            target = map_name(name, rules)
            if target is None or target not in expected:
                unexpected.append(f"{source}: {name} {tuple(tensor.shape)}")
                continue
            mapped[target] = tensor
            origin[target] = f"{source}: {name}"
    if unexpected:
        problems.append(f"unexpected tensor(s): {', '.join(unexpected)}")
    missing = [name for name in expected if name not in mapped and name not in _NOT_IMPORTED]
    if missing:
        problems.append(f"missing tensor(s) (enf names): {', '.join(missing)}")
    problems.extend(f"flow: missing {name}" for name in time_tensors if name not in flow)
    shaped = [f"{origin[k]} has shape {tuple(v.shape)}, enf's {k} needs {tuple(expected[k].shape)}"
              for k, v in mapped.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if shaped:
        problems.append("mis-shaped tensor(s): " + "; ".join(shaped))
    bad = [origin[k] for k, v in mapped.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        problems.append(f"non-finite values in: {', '.join(bad)}")
    return mapped, problems


def load_en_flows(flow_path: str | Path, dequantizer_path: str | Path,
                  args_path: str | Path) -> tuple[MoleculeFlow, dict[str, Any]]:
    """enf's QM9 model holding their weights (float32, eval mode) and its config; raises EnfError on misfit."""
    from enf.models import build_model
    from enf.models.flows.molecules import MoleculeFlow

    args = read_json(args_path)
    if not isinstance(args, dict):
        raise EnfError(f"{args_path}: expected a JSON object of training arguments")
    cfg = config_from_args(args, args_path)
    flow = load_state_dict(flow_path, "flow")
    dequantizer = load_state_dict(dequantizer_path, "dequantizer")
    model = build_model(cfg)
    if not isinstance(model, MoleculeFlow):
        raise EnfError("enf's QM9 model is not a MoleculeFlow; cannot import")
    expected = model.state_dict()
    mapped, problems = map_state(flow, dequantizer, expected, actnorm=cfg["model"]["actnorm"])
    if problems:
        raise EnfError(f"{flow_path} + {dequantizer_path} do not fit enf's QM9 model ({cfg['model']['n_layers']} "
                       f"layers, nf {cfg['model']['hidden_nf']}, attention {cfg['model']['attention']}): "
                       + "; ".join(problems))
    state = {k: v.to(expected[k].dtype) for k, v in mapped.items()}
    model.load_state_dict(state, strict=False)
    counts = torch.zeros(model.max_nodes + 1)
    for size, count in AUTHORS_SIZE_HISTOGRAM.items():
        counts[size] = count
    model.set_size_distribution(counts)
    if model.actnorm is not None and int(model.actnorm.initialized) != 1:
        raise EnfError(f"{flow_path}: its ActNorm was never initialised (initialized = 0)")
    cfg["source"] = {
        "kind": "en_flows_release", "repository": SOURCE_REPOSITORY, "folder": SOURCE_FOLDER,
        "commit": SOURCE_COMMIT, "license": LICENSE,
        "flow": str(flow_path), "flow_sha256": sha256_file(flow_path),
        "dequantizer": str(dequantizer_path), "dequantizer_sha256": sha256_file(dequantizer_path),
        "args": str(args_path), "args_sha256": sha256_file(args_path),
        "epoch": args.get("current_epoch"), "size_histogram": "authors' qm9/analyze.py (training split)",
        "tensors": len(flow) + len(dequantizer),
    }
    return model.eval(), cfg


def import_en_flows(flow_path: str | Path, dequantizer_path: str | Path, out_dir: str | Path,
                    args_path: str | Path | None = None) -> Path:
    """Write an enf run directory (checkpoint.pt, config.yaml, import.json) holding their weights."""
    from enf.version import code_version

    flow_path = Path(flow_path)
    args_path = Path(args_path) if args_path is not None else flow_path.parent / "args.json"
    if not args_path.is_file():
        raise EnfError(f"{args_path}: training arguments not found (pass --args FILE)")
    model, cfg = load_en_flows(flow_path, dequantizer_path, args_path)
    out = Path(out_dir)
    payload = {"format": checkpoints.FORMAT, "config": cfg, "model_state": model.state_dict(),
               "epoch": cfg["source"]["epoch"], "metrics": {}, "code_version": code_version(),
               "source": copy.deepcopy(cfg["source"])}
    checkpoints.save(out / "checkpoint.pt", payload)
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    write_json(out / "import.json", {**cfg["source"], "code_version": code_version(),
                                     "parameters": sum(p.numel() for p in model.parameters())})
    return out
