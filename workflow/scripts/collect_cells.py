"""Copy finished Table 1 and Table 3 cells out of a workflow's results into a small tracked folder of evidence.

For every evaluated run under RESULTS (`eval/<set>/<model>/n<N>/seed<S>/test.json` beside its run directory) this
copies the resolved `config.yaml`, `metrics.json`, the evaluation JSON (`test.json`), `history.csv`,
`training_curves.png` and, for the models named by --checkpoints, the selected `checkpoint.pt`, into
OUT/<set>/<model>/n<N>/seed<S>/; writes OUT/cells.csv (one row per run, with CPU seconds from Snakemake's
benchmark files: a training resumed after a kill counts only its last job, and `resumed_after_epoch` says so)
and renders OUT/table1.{md,csv,tex} from cells.csv with the workflow's table code, the paper's values, the
physical floors and "not run" for every cell without a run. QM9-positional runs (Table 3) also bring their
samples' analysis (`analysis.json`: JS divergence of relative distances; `rel_dist_hist.png`) and make
OUT/table3.*. Cells already in OUT are kept (their files are never rewritten unless the run's checksum changed),
so collecting after every finished job is cheap.

  python workflow/scripts/collect_cells.py --results RESULTS --config config/config.yaml \
      --out reproduction/paper_protocol [--checkpoints enf] [--label NAME]

Several --config files are merged in order, as Snakemake merges them (so `config/config.yaml
config/flow_matching.yaml` labels the flow-matching rows). `--beside DIR` also tabulates the runs of another
evidence folder (its cells.csv; nothing is copied from it), e.g. the likelihood-trained cells beside the
flow-matching ones. The table ends with the CPU hours of every row.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tables  # noqa: E402
from flow_matching_row import flow_matching_row  # noqa: E402

RUN_FILES = ("config.yaml", "metrics.json", "history.csv", "training_curves.png")
COLUMNS = ("dataset", "model", "n_train", "seed", "test_nll", "test_nll_sem", "test_trace", "best_epoch",
           "epochs", "config_hash", "code_version", "train_cpu_seconds", "eval_cpu_seconds", "wall_seconds",
           "mean_nfe", "machine", "resumed_after_epoch")
#: Filled where the run has a Boltzmann evaluation (`enf evaluate --boltzmann`, the workflow's boltzmann rule).
BOLTZMANN_COLUMNS = ("reverse_ess", "forward_ess", "log_z_reverse", "log_z_forward", "boltzmann_samples",
                     "nfe_per_sampling_solve", "js_energy_model", "js_distance_model", "boltzmann_cpu_seconds")
#: The authors' code's time per E-NF training iteration over enf's, at the paper configuration's execution settings
#: (compiled field, direct back-propagation; theirs: the adjoint), measured side by side on this 2-core machine
#: with `benchmarks/bench_core.py --compile --tasks train --authors CHECKOUT` (docs/performance.md, 2026-12-02).
AUTHORS_TIME_RATIO = {("enf", "dw4"): 3.61, ("enf", "lj13"): 4.24}
#: The table of each data set whose cells are collected.
TABLE_OF = {"dw4": "table1", "lj13": "table1", "qm9_positional": "table3"}
#: Filled where the run's samples were analysed (Table 3).
ANALYSIS_COLUMNS = ("js_rel_dist", "analysed_samples")


def machine() -> str:
    """Cores, CPU model and torch version of this machine, in one short line."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import torch

        version = torch.__version__
    except ImportError:
        version = "unknown"
    return f"{os.cpu_count()} cores, {model}, torch {version}"


def benchmark(path: Path) -> dict[str, float]:
    """Snakemake's benchmark row of a job (wall seconds `s`, `cpu_time`), or {} when absent."""
    if not path.is_file():
        return {}
    with open(path) as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        return {}
    out = {}
    for key in ("s", "cpu_time"):
        try:
            out[key] = float(rows[-1][key])
        except (KeyError, ValueError):
            pass
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished_cells(results: Path) -> list[tuple[str, str, str, str]]:
    """(set, model, n, seed) of every Table 1 or 3 run that has both its run directory and its evaluation."""
    found = []
    for test in sorted(results.glob("eval/*/*/n*/seed*/test.json")):
        ds, model, n, seed = test.parts[-5:-1]
        run = results / "runs" / ds / model / n / seed
        if ds in TABLE_OF and all((run / f).is_file() for f in RUN_FILES):
            found.append((ds, model, n.removeprefix("n"), seed.removeprefix("seed")))
    return found


def copy_cell(results: Path, out: Path, cell: tuple[str, str, str, str], checkpoints: set[str]) -> Path:
    """Copy one run's small files into OUT/<set>/<model>/n<N>/seed<S>/ (unchanged files are left alone)."""
    ds, model, n, seed = cell
    rel = Path(ds) / model / f"n{n}" / f"seed{seed}"
    run, target = results / "runs" / rel, out / rel
    target.mkdir(parents=True, exist_ok=True)
    files = [(run / f, target / f) for f in RUN_FILES] + [(results / "eval" / rel / "test.json", target / "test.json")]
    if model in checkpoints:
        files.append((run / "checkpoint.pt", target / "checkpoint.pt"))
    boltzmann = results / "boltzmann" / rel
    if (boltzmann / "eval.json").is_file():
        files += [(boltzmann / "eval.json", target / "boltzmann.json")]
        if (boltzmann / "eval_boltzmann.png").is_file():
            files += [(boltzmann / "eval_boltzmann.png", target / "boltzmann.png")]
    samples = results / "samples" / rel
    if (samples / "analysis.json").is_file():
        files += [(samples / "analysis.json", target / "analysis.json")]
        if (samples / "figures" / "rel_dist_hist.png").is_file():
            files += [(samples / "figures" / "rel_dist_hist.png", target / "rel_dist_hist.png")]
    for src, dst in files:
        if not dst.is_file() or sha256(src) != sha256(dst):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
    return target


def cell_row(results: Path, target: Path, cell: tuple[str, str, str, str], where: str) -> dict[str, Any]:
    """One cells.csv row from the copied files and the jobs' benchmark rows."""
    ds, model, n, seed = cell
    metrics = json.loads((target / "metrics.json").read_text())
    ev = json.loads((target / "test.json").read_text())
    rel = Path(ds) / model / f"n{n}" / f"seed{seed}"
    train, evaluate = (benchmark(results / "benchmarks" / kind / f"{rel}.tsv") for kind in ("train", "evaluate"))
    resumed = resumed_after(results / "logs" / "train" / f"{rel}.log")
    return {"dataset": ds, "model": model, "n_train": n_value(n), "seed": int(seed), "test_nll": ev["nll"],
            "test_nll_sem": ev["nll_sem"], "test_trace": ev["trace"], "best_epoch": metrics["best_epoch"],
            "epochs": metrics["epochs"], "config_hash": metrics["config_hash"],
            "code_version": metrics["code_version"], "train_cpu_seconds": train.get("cpu_time"),
            "eval_cpu_seconds": evaluate.get("cpu_time"),
            "wall_seconds": (train.get("s", 0.0) + evaluate.get("s", 0.0)) or None,
            "mean_nfe": metrics["mean_nfe"], "machine": where, "resumed_after_epoch": resumed,
            **boltzmann_row(target / "boltzmann.json", results / "benchmarks" / "boltzmann" / f"{rel}.tsv"),
            **analysis_row(target / "analysis.json")}


def n_value(n: str) -> int | str:
    """A cell's training-set size: a number, or a word such as `all` (QM9-positional's whole split)."""
    return int(n) if n.isdigit() else n


def cell_key(dataset: str, model: str, n: int | str, seed: int | str) -> tuple[str, str, tuple[int, str], int]:
    """The sort key of a cell: sizes in numeric order, words after them."""
    n = n_value(str(n))
    return dataset, model, (n, "") if isinstance(n, int) else (10**18, n), int(seed)


def analysis_row(path: Path) -> dict[str, Any]:
    """The JS divergence of relative distances of a run's analysed samples (empty without an analysis)."""
    if not path.is_file():
        return {}
    analysis = json.loads(path.read_text())
    return {"js_rel_dist": analysis.get("js_rel_dist"), "analysed_samples": analysis.get("n_molecules")}


def boltzmann_row(path: Path, bench: Path) -> dict[str, Any]:
    """The importance-sampling figures of a run's Boltzmann evaluation (empty without one)."""
    if not path.is_file():
        return {}
    b = json.loads(path.read_text())["boltzmann"]
    return {"reverse_ess": b["reverse_ess"], "forward_ess": b["forward_ess"], "log_z_reverse": b["log_z_reverse"],
            "log_z_forward": b["log_z_forward"], "boltzmann_samples": b["n_samples"],
            "nfe_per_sampling_solve": b["nfe_per_sampling_solve"], "js_energy_model": b["js_energy_model"],
            "js_distance_model": b["js_distance_model"], "boltzmann_cpu_seconds": benchmark(bench).get("cpu_time")}


def resumed_after(log: Path) -> int | None:
    """The epoch after which the last training job resumed (its CPU and wall seconds cover only the rest)."""
    if not log.is_file():
        return None
    found = re.search(r"resuming from \S+ after epoch (\d+)", log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


def write_cells(out: Path, rows: list[dict[str, Any]]) -> None:
    """cells.csv, merged with the rows already there (a row per (set, model, n, seed), sorted)."""
    path = out / "cells.csv"
    merged: dict[tuple, dict[str, Any]] = {}
    if path.is_file():
        with open(path) as handle:
            for row in csv.DictReader(handle):
                merged[cell_key(row["dataset"], row["model"], row["n_train"], row["seed"])] = row
    for row in rows:
        key = cell_key(row["dataset"], row["model"], row["n_train"], row["seed"])
        if key in merged and merged[key].get("machine") and merged[key]["code_version"] == row["code_version"]:
            row["machine"] = merged[key]["machine"]  # keep the machine of the session that collected it first
        merged[key] = row
    tmp = path.with_name(".cells.csv.tmp")
    with open(tmp, "w", newline="") as handle:
        columns = (COLUMNS + (BOLTZMANN_COLUMNS if any(row.get("reverse_ess") for row in merged.values()) else ())
                   + (ANALYSIS_COLUMNS if any(row.get("js_rel_dist") for row in merged.values()) else ()))
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for key in sorted(merged):
            writer.writerow({k: merged[key].get(k) for k in columns})
    os.replace(tmp, path)


def merged_config(paths: list[Path]) -> dict[str, Any]:
    """The configuration files merged in order (nested mappings key by key, as Snakemake's --configfile), with
    the flow-matching rows' label when that switch is on."""
    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    config: dict[str, Any] = {}
    for path in paths:
        config = merge(config, yaml.safe_load(path.read_text()) or {})
    row = flow_matching_row(config)
    if row is not None:
        config.setdefault("models", {})[row[0]] = row[1]
    return config


def read_cells(folder: Path) -> list[dict[str, str]]:
    with open(folder / "cells.csv") as handle:
        return list(csv.DictReader(handle))


def cost_lines(rows: list[dict[str, str]], labels: dict[str, str]) -> list[str]:
    """Per row of the table: runs, CPU hours of training and of evaluation (a resumed run counts its last job)."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        runs = [r for r in rows if r["model"] == model]
        hours = {k: sum(float(r[k] or 0) for r in runs) / 3600 for k in ("train_cpu_seconds", "eval_cpu_seconds")}
        resumed = sum(1 for r in runs if r.get("resumed_after_epoch"))
        note = f" ({resumed} resumed: their earlier jobs not counted)" if resumed else ""
        lines.append(f"- {labels.get(model, model)}: {len(runs)} run(s), {hours['train_cpu_seconds']:.2f} CPU h "
                     f"training + {hours['eval_cpu_seconds']:.2f} CPU h test evaluation{note}")
    return lines


def shown_path(path: Path) -> str:
    """`path` relative to the workflow checkout that holds it (the folder with a Snakefile), so that a committed
    table names `config/config.yaml`, not where the runs happened to live."""
    path = path.resolve()
    for root in path.parents:
        if (root / "Snakefile").is_file():
            return str(path.relative_to(root))
    return path.name


def cell_cost_lines(rows: list[dict[str, str]], labels: dict[str, str]) -> list[str]:
    """Per cell: mean CPU time per run of training and of the test evaluation, and for E-NF the authors' code's
    estimated training time for the same iterations on this machine (enf's time x the measured ratio)."""
    lines = ["| Method | data set | n | runs | training, CPU h per run | test, CPU min per run "
             "| authors' code, estimated CPU h per run |", "|---|---|---|---|---|---|---|"]
    cells = {(r["model"], r["dataset"], str(r["n_train"])) for r in rows}
    def order(cell: tuple[str, str, str]) -> tuple:
        model, ds, n = cell
        return model, *cell_key(ds, model, n, 0)[::2]  # model, data set, size in numeric order

    for model, ds, n in sorted(cells, key=order):
        group = [r for r in rows if (r["model"], r["dataset"], str(r["n_train"])) == (model, ds, n)]
        timed = [float(r["train_cpu_seconds"]) / 3600 for r in group
                 if r.get("train_cpu_seconds") and not r.get("resumed_after_epoch")]
        tested = [float(r["eval_cpu_seconds"]) / 60 for r in group if r.get("eval_cpu_seconds")]
        train = sum(timed) / len(timed) if timed else None
        ratio = AUTHORS_TIME_RATIO.get((model, ds))
        shown_train = "–" if train is None else f"{train:.2f}" + (
            "" if len(timed) == len(group) else f" ({len(timed)} of {len(group)} runs)")
        shown_test = f"{sum(tested) / len(tested):.1f}" if tested else "–"
        shown_authors = f"{train * ratio:.2f}" if train is not None and ratio else "–"
        lines.append(f"| {labels.get(model, model)} | {ds.upper()} | {n} | {len(group)} | {shown_train} | "
                     f"{shown_test} | {shown_authors} |")
    return lines


def row_settings(entry: dict[str, Any], datasets: dict[str, Any]) -> dict[str, Any]:
    """A row's own settings (set, args, model, its budgets for `datasets`), as the table footer prints them."""
    budgets = {ds: b for ds, b in (entry.get("budgets") or {}).items() if ds in datasets}
    return {k: v for k, v in {**entry, "budgets": budgets}.items() if k in ("set", "args", "model", "budgets") and v}


def render_table(out: Path, config: dict[str, Any], config_file: str, paper_csv: Path, label: str,
                 beside: tuple[Path, ...] = (), protocol: dict[str, Any] | None = None) -> list[Path]:
    """table1.{md,csv,tex} (and table3.* where QM9-positional cells exist) from cells.csv and those of `beside`,
    with the workflow's table code (paper values, floors, "not run"), and the CPU hours of each row below each
    Markdown table. The footer names what the configuration changes relative to `protocol` (default: none).
    Returns the Markdown tables written."""
    labels = {m: (config["models"].get(m) or {}).get("label", m) for m in config["models"]}
    sourced = [(folder, r) for folder in (out, *beside) for r in read_cells(folder)]
    written = []
    for table in ("table1", "table3"):
        rows = [(folder, r) for folder, r in sourced if TABLE_OF.get(r["dataset"]) == table]
        if table != "table1" and not rows:
            continue
        manifest = []
        for folder, r in rows:
            cell = folder / r["dataset"] / r["model"] / f"n{r['n_train']}" / f"seed{r['seed']}"
            manifest.append({"dataset": r["dataset"], "model": r["model"], "label": labels.get(r["model"], r["model"]),
                             "n_train": r["n_train"], "column": r["n_train"], "seed": int(r["seed"]),
                             "evaluation": str(cell / "test.json"), "run": str(cell / "metrics.json"),
                             "analysis": str(cell / "analysis.json"), "kind": "trained"})
        exps = {ds: {"n_train": [str(n) for n in exp["n_train"]], "budgets": exp.get("budgets", {}),
                     "subset": None, "data_args": "", "columns": {str(n): str(n) for n in exp["n_train"]},
                     "evaluate": exp.get("evaluate", {}), "sample": exp.get("sample"), "set": exp.get("set", {})}
                for ds, exp in config["experiments"].items() if exp.get("table") == table}
        meta = {"table": table, "config_name": label, "config_files": [config_file],
                "budget_note": config.get("budget_note"), "seeds": config["seeds"], "experiments": exps,
                "pretrained": None, "models": labels,
                "model_settings": {m: row_settings(entry, exps) for m, entry in config["models"].items()
                                   if entry and set(entry) - {"label"}}}
        md = out / f"{table}.md"
        make_tables.make_table(manifest, meta, paper_csv, protocol or config, out / f"{table}.csv", md,
                               out / f"{table}.tex")
        with open(md, "a") as handle:
            handle.write("\nCPU cost, over the runs above (Snakemake's benchmark of each job):\n\n"
                         + "\n".join(cost_lines([r for _, r in rows], labels)) + "\n\nPer cell (a run resumed "
                         "after a kill is left out of the training mean, its first job's time being unknown):\n\n"
                         + "\n".join(cell_cost_lines([r for _, r in rows], labels)) + "\n")
            ess = ess_lines([r for folder, r in rows if folder == out], labels)
            if ess:
                handle.write("\nImportance sampling (`enf evaluate --boltzmann N`, exact log-densities; mean over "
                             "the seeds evaluated; the true log Z lies between the reverse and forward "
                             "estimates):\n\n" + "\n".join(ess) + "\n")
        written.append(md)
    return written


def _mean_of(rows: list[dict[str, str]], column: str) -> float:
    return sum(float(r[column]) for r in rows) / len(rows)


def ess_lines(rows: list[dict[str, str]], labels: dict[str, str]) -> list[str]:
    """A Markdown table of reverse/forward ESS, log Z bracket and sampling NFE per cell with a Boltzmann run."""
    done = [r for r in rows if r.get("reverse_ess")]
    if not done:
        return []
    lines = ["| Method | data set | n | seeds | reverse ESS | forward ESS | log Z reverse / forward | model samples "
             "| NFE per sampling solve |", "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted({(r["model"], r["dataset"], int(r["n_train"])) for r in done}):
        group = [r for r in done if (r["model"], r["dataset"], int(r["n_train"])) == key]
        mean = functools.partial(_mean_of, group)
        lines.append(f"| {labels.get(key[0], key[0])} | {key[1].upper()} | {key[2]} | {len(group)} | "
                     f"{100 * mean('reverse_ess'):.2f} % | {100 * mean('forward_ess'):.3g} % | "
                     f"{mean('log_z_reverse'):.2f} / {mean('log_z_forward'):.2f} | "
                     f"{int(mean('boltzmann_samples'))} | {mean('nfe_per_sampling_solve'):.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, type=Path, help="the workflow's outdir (e.g. results)")
    parser.add_argument("--config", required=True, type=Path, nargs="+",
                        help="the configuration file(s) the runs were made with, merged in order; the first is "
                             "the protocol the table footer compares with")
    parser.add_argument("--beside", type=Path, action="append", default=[],
                        help="another evidence folder whose cells are tabulated too (repeatable)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--checkpoints", nargs="*", default=["enf"], help="models whose checkpoint.pt is kept")
    parser.add_argument("--paper", type=Path,
                        default=Path(__file__).resolve().parents[1] / "resources" / "paper_tables.csv")
    parser.add_argument("--label", default=None, help="configuration name in the table footer")
    args = parser.parse_args(argv)
    config = merged_config(args.config)
    cells = finished_cells(args.results)
    where = machine()
    rows = [cell_row(args.results, copy_cell(args.results, args.out, c, set(args.checkpoints)), c, where)
            for c in cells]
    args.out.mkdir(parents=True, exist_ok=True)
    write_cells(args.out, rows)
    tables = render_table(args.out, config, " + ".join(map(shown_path, args.config)), args.paper,
                          args.label or config.get("name", "paper"), tuple(args.beside),
                          protocol=make_tables.load_protocol(args.config[0]))
    print(f"{len(rows)} cell run(s) collected into {args.out}; tables in {', '.join(map(str, tables))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
