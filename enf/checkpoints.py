"""Run checkpoints: the selected model (`checkpoint.pt`) and the resumable training state (`state/last.pt`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from enf.errors import EnfError
from enf.io import atomic_path

FORMAT = "enf-checkpoint-1"


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save, atomically: a crash mid-write leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: str | Path) -> dict[str, Any]:
    """torch.load of a checkpoint written by `save`, with a clear error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise EnfError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise EnfError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EnfError(f"{path}: not an enf checkpoint (expected format {FORMAT!r})")
    return payload


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model that `checkpoint.pt` describes and load its weights; return (model, payload)."""
    from enf.models import build_model

    payload = load(path)
    cfg = payload["config"]
    model = build_model(cfg)
    dtype = torch.float64 if cfg["train"]["dtype"] == "float64" else torch.float32
    model.to(dtype=dtype)
    missing, unexpected = model.load_state_dict(payload["model_state"], strict=False)
    if missing or unexpected:
        raise EnfError(f"{path}: weights do not fit the model of its config; missing {missing}, "
                       f"unexpected {unexpected}")
    return model.to(device), payload
