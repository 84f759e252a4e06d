"""The table of effective sample sizes (beyond the paper): reverse ESS from model samples and forward ESS on test
data, in percent, mean and sample standard deviation over seeds, for every DW4/LJ13 run of the configuration, plus the
Jensen-Shannon divergence of the samples' energy histogram from the data's and log Z estimates.

Run by Snakemake (rule `ess_table`, via `script:`) or by hand:
  make_ess_table.py --manifest M.json --out results/tables/ess [--config-name NAME] [--budget-note TEXT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

# column -> (title, key in the `boltzmann` section of `enf evaluate`'s JSON, scale, decimals)
COLUMNS = {
    "reverse_ess": ("Reverse ESS (%)", "reverse_ess", 100.0, 2),
    "forward_ess": ("Forward ESS (%)", "forward_ess", 100.0, 2),
    "js_energy": ("JS(energy), samples", "js_energy_model", 1.0, 3),
    "js_energy_rw": ("JS(energy), reweighted", "js_energy_reweighted", 1.0, 3),
    "log_z_reverse": ("log Z (reverse)", "log_z_reverse", 1.0, 2),
    "log_z_forward": ("log Z (forward)", "log_z_forward", 1.0, 2),
    "failed_pct": ("Failed samples (%)", None, 100.0, 1),
}
DATASET_NAMES = {"dw4": "DW4", "lj13": "LJ13"}


def read_cell(path: str) -> dict[str, Any] | None:
    """The `boltzmann` section of one evaluation JSON, or None when the file is missing."""
    p = Path(path)
    if not p.is_file():
        return None
    return json.loads(p.read_text()).get("boltzmann")


def value(b: dict[str, Any], column: str) -> float:
    """One column's value (scaled) from a cell's Boltzmann numbers; NaN when absent."""
    _, key, scale, _ = COLUMNS[column]
    if key is None:
        raw = b["n_failed"] / b["n_samples"] if b.get("n_samples") else None
    else:
        raw = b.get(key)
    if raw is None or not math.isfinite(float(raw)):
        return math.nan
    return float(raw) * scale


def build(manifest: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long form (one row per cell) and the aggregate (mean, sd over seeds per dataset, model, n_train)."""
    rows = []
    for rec in manifest:
        b = read_cell(rec["boltzmann"])
        row = {k: rec[k] for k in ("dataset", "model", "label", "n_train", "seed")}
        row.update({c: (value(b, c) if b else math.nan) for c in COLUMNS})
        row.update(n_samples=b.get("n_samples") if b else None, n_data=b.get("n_data") if b else None,
                   trace=b.get("trace") if b else None, status="measured" if b else "not run")
        rows.append(row)
    long = pd.DataFrame(rows)
    agg = []
    for key, group in long.groupby(["dataset", "label", "n_train"], sort=False):
        out = dict(zip(["dataset", "label", "n_train"], key))
        for c in COLUMNS:
            v = group[c].dropna()
            out[f"{c}_mean"] = v.mean() if len(v) else math.nan
            out[f"{c}_std"] = v.std(ddof=1) if len(v) > 1 else math.nan
        out["n_seeds"] = int(group["status"].eq("measured").sum())
        out["n_samples"] = ",".join(sorted({str(int(n)) for n in group["n_samples"].dropna()}))
        out["trace"] = ",".join(sorted({str(t) for t in group["trace"].dropna()}))
        agg.append(out)
    return long, pd.DataFrame(agg)


def fmt(mean: float, std: float, decimals: int) -> str:
    if math.isnan(mean):
        return "not run"
    text = f"{mean:.{decimals}f}"
    return text + (f" ± {std:.{decimals}f}" if not math.isnan(std) else "")


def markdown(agg: pd.DataFrame, config_name: str, budget_note: str) -> str:
    lines = ["# Effective sample size against the target energy (beyond the paper)", ""]
    head = ["Data set", "n_train", "Method"] + [COLUMNS[c][0] for c in COLUMNS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in agg.itertuples():
        cells = [DATASET_NAMES.get(r.dataset, r.dataset), str(r.n_train), r.label]
        cells += [fmt(getattr(r, f"{c}_mean"), getattr(r, f"{c}_std"), COLUMNS[c][3]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Configuration `{config_name}`. {budget_note}".strip(),
              "Reverse ESS: (sum w)^2 / (n sum w^2) over model samples, w = exp(-E/T) / q; forward ESS: "
              "n^2 / (sum w * sum 1/w) over the test split. Mean ± sample standard deviation over seeds; "
              f"samples per run: {', '.join(sorted(set(agg['n_samples'])))}; log-density trace: "
              f"{', '.join(sorted(set(agg['trace'])))}. Failed sample solves count as weight zero.", ""]
    return "\n".join(lines)


def write(manifest: list[dict[str, Any]], out: str, config_name: str, budget_note: str) -> None:
    long, agg = build(manifest)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    merged = long.merge(agg, on=["dataset", "label", "n_train"], how="left", suffixes=("", "_agg"))
    merged.to_csv(out_path.with_suffix(".csv"), index=False)
    out_path.with_suffix(".md").write_text(markdown(agg, config_name, budget_note))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (the Snakemake entry is at the bottom)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="JSON list of {dataset, model, label, n_train, seed, boltzmann}")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.csv and PREFIX.md")
    p.add_argument("--config-name", default="")
    p.add_argument("--budget-note", default="")
    args = p.parse_args(argv)
    write(json.loads(Path(args.manifest).read_text()), args.out, args.config_name, args.budget_note)
    return 0


def run_from_snakemake(smk: Any) -> None:
    """Entry point for Snakemake's `script:` directive."""
    with open(smk.log[0], "w") as log:
        sys.stderr = log
        write(smk.params.manifest, str(Path(smk.output.csv).with_suffix("")), smk.params.config_name,
              smk.params.budget_note)
        print(Path(smk.output.md).read_text(), file=log)


if "snakemake" in globals():
    run_from_snakemake(globals()["snakemake"])
elif __name__ == "__main__":
    sys.exit(main())
