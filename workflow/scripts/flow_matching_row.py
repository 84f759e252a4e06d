"""The flow-matching row of the tables, declared once: the workflow (rules/flow_matching.smk) trains it and
collect_cells.py labels it and prints its settings under the tables it fills."""

from __future__ import annotations

from typing import Any

DEFAULT_KEY = "enf_fm"
DEFAULT_LABEL = "E-NF, flow matching (ours)"


def flow_matching_row(config: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(model key, model entry) of the row the `flow_matching` section asks for, or None when it is off.

    The entry is a `models:` entry like any other: E-NF trained with `--objective flow_matching`, the section's
    pairing, sigma and `set`, and its per-data-set budgets.
    """
    fm = config.get("flow_matching") or {}
    if not fm.get("enabled", False):
        return None
    sets = {"flow_matching.pairing": fm.get("pairing", "equivariant_ot"),
            "flow_matching.sigma": fm.get("sigma", 0.0), **(fm.get("set") or {})}
    entry = {"label": fm.get("label", DEFAULT_LABEL), "model": fm.get("model", "enf"),
             "args": ["--objective", "flow_matching"], "set": sets,
             "budgets": {ds: {str(n): b for n, b in (per_n or {}).items()}
                         for ds, per_n in (fm.get("budgets") or {}).items()}}
    return fm.get("model_key", DEFAULT_KEY), entry


def flow_matching_experiments(config: dict[str, Any]) -> list[str]:
    """The experiments (data sets) of this configuration that get the flow-matching row."""
    wanted = (config.get("flow_matching") or {}).get("experiments", ["dw4", "lj13", "qm9_positional"])
    return [ds for ds in wanted if ds in (config.get("experiments") or {})]
