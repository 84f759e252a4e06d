"""Fill an evidence block of the README from a folder that collect_cells.py made.

The block is the text between `<!-- NAME: start -->` and `<!-- NAME: end -->`; it gets the folder's Table 1 rows
named by --rows (with the header and the physical floor), one line per cell of --model with each seed's test NLL,
its epoch and CPU time, and with --cost the CPU hours of each row and the importance-sampling table when there is one.

  python workflow/scripts/readme_evidence.py README.md --block "table1 evidence" \
      --folder reproduction/paper_protocol --rows E-NF --model enf
  python workflow/scripts/readme_evidence.py README.md --block "flow matching evidence" \
      --folder reproduction/flow_matching --rows "E-NF, flow matching (ours)" E-NF --model enf_fm --cost
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from pathlib import Path

NAMES = {"dw4": "DW4", "lj13": "LJ13", "qm9_positional": "QM9-positional"}
FLOOR = "Physical floor"


def table_rows(table_md: str, labels: list[str]) -> list[str]:
    """The first Markdown table of `table_md`: its header and the rows whose method is in `labels` or the floor."""
    lines = table_md.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    keep = [row for row in table[2:] if row.split("|")[1].strip() in labels
            or row.split("|")[1].strip().startswith(FLOOR)]
    return table[:2] + keep


def seed_lines(cells_csv: Path, model: str, header: str) -> list[str]:
    """One line per (data set, size) of `model` among the table's columns (`header`): each seed's test NLL +- SE,
    best epoch and CPU times."""
    with open(cells_csv) as handle:
        cells = [c for c in csv.DictReader(handle)
                 if c["model"] == model and f"{NAMES.get(c['dataset'], c['dataset'])} n=" in header]
    lines = []
    sizes = sorted({(c["dataset"], c["n_train"]) for c in cells},
                   key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else 10**18))
    for ds, n in sizes:
        parts = []
        for c in sorted((c for c in cells if (c["dataset"], c["n_train"]) == (ds, n)), key=lambda c: int(c["seed"])):
            cpu = float(c["train_cpu_seconds"] or 0) / 60
            resumed = f" after the resume at epoch {c['resumed_after_epoch']}" if c.get("resumed_after_epoch") else ""
            parts.append(f"seed {c['seed']}: {float(c['test_nll']):.2f} +- {float(c['test_nll_sem']):.2f} "
                         f"(epoch {c['best_epoch']}; {cpu:.0f} CPU min training{resumed}, "
                         f"{float(c['eval_cpu_seconds'] or 0):.0f} s test)")
        lines.append(f"- {NAMES.get(ds, ds)} n = {n}: " + ", ".join(parts) + ".")
    return lines


def evidence(folder: Path, rows: list[str], model: str, cost: bool) -> str:
    """The block's text."""
    table_md = (folder / "table1.md").read_text()
    table = table_rows(table_md, rows)
    text = "\n".join(table) + "\n\n" + "\n".join(seed_lines(folder / "cells.csv", model, table[0]))
    if cost:
        bullets = [line for line in table_md.split("CPU cost", 1)[-1].splitlines() if line.startswith("- ")]
        text += "\n\nCPU cost:\n" + "\n".join(bullets)
        parts = table_md.split("\nImportance sampling", 1)
        if len(parts) == 2:
            text += "\n\nImportance sampling" + parts[1].rstrip()
    return text


def fill(readme: str, block: str, text: str) -> str:
    """`readme` with the text between the block's markers replaced by `text`."""
    start, end = f"<!-- {block}: start -->", f"<!-- {block}: end -->"
    pattern = re.escape(start) + ".*?" + re.escape(end)
    if not re.search(pattern, readme, flags=re.S):
        raise ValueError(f"no block '{block}' (the markers {start} ... {end})")
    return re.sub(pattern, lambda _: f"{start}\n{text}\n{end}", readme, count=1, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("readme", type=Path)
    parser.add_argument("--block", required=True, help="the block's name in its markers")
    parser.add_argument("--folder", required=True, type=Path, help="a folder made by collect_cells.py")
    parser.add_argument("--rows", nargs="+", required=True, help="the methods (table rows) to show")
    parser.add_argument("--model", required=True, help="the model whose seeds are listed (e.g. enf, enf_fm)")
    parser.add_argument("--cost", action="store_true", help="add the CPU hours and the importance-sampling table")
    args = parser.parse_args(argv)
    try:
        readme = fill(args.readme.read_text(), args.block, evidence(args.folder, args.rows, args.model, args.cost))
    except (OSError, ValueError, KeyError, StopIteration) as err:
        print(f"readme_evidence: {args.readme} / {args.folder}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    tmp = args.readme.with_name(f".{args.readme.name}.tmp")
    tmp.write_text(readme)
    os.replace(tmp, args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
