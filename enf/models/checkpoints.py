"""Run checkpoints: the selected model (`checkpoint.pt`) and the resumable training state (`state/last.pt`).

A checkpoint holds plain data only (tensors, numbers, strings, None, lists, tuples and dicts) and is read with
`torch.load(weights_only=True)`, so that opening a file cannot run code. Files of earlier versions that hold
numpy arrays or scalars (the NumPy RNG state) are read as such data too; anything else is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import pickletools
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from enf.errors import EnfError
from enf.io import atomic_path

if TYPE_CHECKING:
    from enf.models.flows.base import DensityModel

FORMAT = "enf-checkpoint-1"
_SCALARS = (int, float, bool, str, type(None))


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save, atomically (a crash mid-write leaves the previous file intact), of plain data only."""
    _check_plain(payload, "payload")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _check_plain(obj: Any, where: str) -> None:
    """Refuse (as a bug of the caller) anything `load` could not read back with weights_only=True."""
    if isinstance(obj, Tensor) or type(obj) in _SCALARS:  # exact types: numpy's float64 subclasses float
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint {where}: key {key!r} is not a string or integer")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint {where}: {type(obj).__module__}.{type(obj).__qualname__} is not plain data "
                    "(tensor, number, string, list or dict)")


def _numpy_data() -> list[Any]:
    """The numpy names an earlier version's pickles use to rebuild arrays and scalars (data, not code)."""
    core = getattr(np, "_core", None) or np.core
    multiarray = core.multiarray
    names = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    names += [type(np.dtype(code)) for code in ("b", "i4", "i8", "u4", "u8", "f4", "f8", "U1")]
    return names


@contextlib.contextmanager
def _allow_numpy_data() -> Iterator[None]:
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        yield
        return
    with safe_globals(_numpy_data()):
        yield


def load(path: str | Path) -> dict[str, Any]:
    """torch.load (weights only) of a checkpoint written by `save`, refusing missing, corrupt or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise EnfError(f"{path}: checkpoint not found")
    try:
        with _allow_numpy_data():
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise EnfError(_refusal(path, err)) from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise EnfError(f"{path}: not a readable checkpoint ({load_error_reason(err)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EnfError(f"{path}: not an enf checkpoint (expected format {FORMAT!r})")
    return payload


def _refusal(path: Path, err: Exception) -> str:
    """The one-line message for a file the weights-only unpickler stopped at: unsafe objects, or not a checkpoint."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _numpy_data()}
    names = [name for name in _pickled_globals(path) if name not in allowed]
    if not names:
        return f"{path}: not a readable checkpoint ({load_error_reason(err)})"
    return (f"{path}: refused: it holds Python objects other than tensors, numbers, strings, lists and dicts "
            f"({', '.join(names[:5])}), and loading them could run arbitrary code; if it is an enf checkpoint of an "
            f"earlier version from a source you trust, convert it once with "
            f"`python -m enf.models.checkpoints --trust {path}`")


def _pickled_globals(path: Path) -> list[str]:
    """The importable names a pickle refers to (read from its opcodes: nothing is executed)."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # an older torch, or a damaged archive
            return []
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle, or truncated: what was read so far is what it names
        pass
    return list(dict.fromkeys(names))


def load_error_reason(err: BaseException) -> str:
    """What torch.load's (many-line) error says went wrong, on one line."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        after = text.split(marker, 1)[1].split("Check the documentation of torch.load")[0]
        lines = [line.strip() for line in after.splitlines() if line.strip()]
        if lines:
            return " ".join(lines)[:300]
    return f"{type(err).__name__}: {_first_line(err)}"


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[DensityModel, dict[str, Any]]:
    """Rebuild the model that `checkpoint.pt` describes and load its weights; return (model, payload).

    Settings declared after the checkpoint was written take their defaults (payload['config'] shows them).
    """
    from enf.config import complete, validate
    from enf.models import build_model

    payload = load(path)
    cfg, state = payload.get("config"), payload.get("model_state")
    if not isinstance(cfg, dict):
        raise EnfError(f"{path}: holds no config")
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise EnfError(f"{path}: holds no model weights (name -> tensor)")
    try:
        cfg = payload["config"] = complete(cfg)
        validate(cfg)
    except EnfError as err:
        raise EnfError(f"{path}: its config is invalid: {err}") from None
    model = build_model(cfg)
    dtype = torch.float64 if cfg["train"]["dtype"] == "float64" else torch.float32
    model.to(dtype=dtype)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of the wrong shape
        problems = [line.strip().rstrip(".") for line in str(err).splitlines()[1:] if line.strip()]
        raise EnfError(f"{path}: weights do not fit the model of its config: "
                       + ("; ".join(problems[:3]) or _first_line(err))) from None
    if missing or unexpected:
        raise EnfError(f"{path}: weights do not fit the model of its config; missing {missing}, "
                       f"unexpected {unexpected}")
    return model.to(device), payload


def plain(obj: Any) -> Any:
    """`obj` as plain data: numpy arrays and scalars become lists and Python numbers, paths strings."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, OrderedDict):
        return OrderedDict((key, plain(value)) for key, value in obj.items())
    if isinstance(obj, dict):
        return {key: plain(value) for key, value in obj.items()}
    if isinstance(obj, tuple):
        return tuple(plain(value) for value in obj)
    if isinstance(obj, list):
        return [plain(value) for value in obj]
    return obj


def convert_trusted(path: str | Path) -> None:
    """Rewrite a checkpoint of an earlier version as plain data. Unpickles it in full: trusted files only."""
    path = Path(path)
    if not path.is_file():
        raise EnfError(f"{path}: checkpoint not found")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EnfError(f"{path}: not an enf checkpoint (expected format {FORMAT!r})")
    try:
        save(path, plain(payload))
    except TypeError as err:
        raise EnfError(f"{path}: cannot be converted to plain data: {err}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m enf.models.checkpoints --trust FILE...`: convert trusted checkpoints of earlier versions."""
    parser = argparse.ArgumentParser(prog="python -m enf.models.checkpoints", description=convert_trusted.__doc__)
    parser.add_argument("--trust", nargs="+", required=True, metavar="FILE",
                        help="checkpoints from a source you trust (they are unpickled in full)")
    for path in parser.parse_args(argv).trust:
        try:
            convert_trusted(path)
        except EnfError as err:
            print(f"enf.models.checkpoints: error: {err}", file=sys.stderr)
            return 2
        print(f"converted {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
