"""Figure of a table's test NLL against the number of training samples, ours (mean ± sd) beside the paper's.

Reads the long-form csv of `make_tables.py`; one panel per data set, one colour per method; the paper's values
are dashed lines with hollow markers in the same colour. Run by Snakemake (`script:`) or:
  plot_results.py --csv results/tables/table1.csv --out results/figures/table1_nll.png
"""


import argparse
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

NAMES = {"dw4": "DW4", "lj13": "LJ13", "qm9": "QM9", "qm9_positional": "QM9-positional"}


def plot(csv: str | Path, out: str | Path) -> None:
    """Draw the NLL-versus-training-size figure of one table csv."""
    df = pd.read_csv(csv, dtype={"n_train": str})
    df = df[(df["metric"] == "nll") & df["n_train"].str.fullmatch(r"[0-9]+")].copy()
    df["n"] = df["n_train"].astype(int)
    datasets = list(dict.fromkeys(df["dataset"]))
    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(5.2 * max(len(datasets), 1), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = list(dict.fromkeys(df["method"]))
    for ax, ds in zip(axes[0], datasets):
        sub = df[df["dataset"] == ds]
        for i, method in enumerate(methods):
            m = sub[sub["method"] == method].sort_values("n")
            if m.empty:
                continue
            colour = colours[i % len(colours)]
            ax.errorbar(m["n"], m["mean"], yerr=m["std"].fillna(0), marker="o", color=colour, label=method,
                        capsize=3)
            paper = m.dropna(subset=["paper"])
            if not paper.empty:
                ax.plot(paper["n"], paper["paper"], ls="--", marker="o", mfc="none", color=colour, alpha=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("training samples")
        ax.set_ylabel("test NLL (nats)")
        ax.set_title(f"{NAMES.get(ds, ds)} (dashed: paper)")
        ax.grid(alpha=0.3)
    if datasets:
        axes[0][0].legend(fontsize=8)
    budget = df["budget"].dropna().iloc[0] if "budget" in df and df["budget"].notna().any() else ""
    name = df["config_name"].iloc[0] if "config_name" in df and len(df) else ""
    fig.suptitle(f"config {name}: {budget}"[:150], fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    plot(args.csv, args.out)
    return 0


def run_from_snakemake(smk: Any) -> None:
    """Entry point for Snakemake's `script:` directive."""
    with open(smk.log[0], "w") as log:
        sys.stderr = log
        plot(smk.input.csv, smk.output[0])


if "snakemake" in globals():
    run_from_snakemake(globals()["snakemake"])
elif __name__ == "__main__":
    sys.exit(main())
