"""The target energy of a data set with a known one (DW4, LJ13 with its pair-counting convention)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from enf.data.energies import PairEnergy, make_energy
from enf.errors import EnfError

BOLTZMANN_DATASETS = ("dw4", "lj13")


def _find_convention(obj: Any) -> str | None:
    """The LJ13 energy convention recorded anywhere in a data set's meta.json."""
    if isinstance(obj, dict):
        if obj.get("name") == "lj13" and obj.get("convention") in ("ordered", "unique"):
            return str(obj["convention"])
        for value in obj.values():
            found = _find_convention(value)
            if found:
                return found
    if isinstance(obj, list):
        for value in obj:
            found = _find_convention(value)
            if found:
                return found
    return None


def energy_for_data(dataset: str, data_path: str | Path) -> tuple[PairEnergy, str]:
    """The target energy of `dataset` and where its settings came from (meta.json beside the data, or default)."""
    if dataset not in BOLTZMANN_DATASETS:
        raise EnfError(f"Boltzmann evaluation needs a data set with a known energy ({', '.join(BOLTZMANN_DATASETS)}); "
                       f"this checkpoint is for {dataset!r}")
    if dataset == "dw4":
        return make_energy("dw4"), "protocol"
    meta = Path(data_path).parent / "meta.json"
    if meta.is_file():
        try:
            convention = _find_convention(json.loads(meta.read_text()))
        except json.JSONDecodeError:
            raise EnfError(f"{meta}: not valid JSON") from None
        if convention:
            return make_energy("lj13", convention), f"{meta}"
    return make_energy("lj13", "ordered"), "protocol default (ordered pairs; no convention found in meta.json)"
