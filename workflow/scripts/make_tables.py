"""Assemble one of the paper's tables from the workflow's results: csv (long form), md and tex.

Each cell: mean and sample standard deviation over seeds of what the jobs measured, the paper's value beside it
(`paper_tables.csv`) and the difference (ours - paper). Cells without a measurement say "not run"; nothing is
ever filled in. The footer names the configuration and budget and lists every deviation from the protocol
(the protocol = config/config.yaml, with the budgets it leaves to enf taken from enf) that the configuration
makes: epochs, batch sizes, training-set subsets, evaluation subsets, sample counts, seeds and per-model settings.

Run by Snakemake (rule `tables`, via `script:`) or by hand:
  make_tables.py --manifest M.json --meta META.json --paper paper_tables.csv --protocol config/config.yaml
                 --out results/tables/table1
"""


import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

# metric -> (column title, scale applied to the measured value, decimals, source: evaluation/analysis)
METRICS: dict[str, tuple[str, float, int, str]] = {
    "nll": ("NLL", 1.0, 2, "evaluation"),
    "atom_stability_pct": ("Atom stable (%)", 100.0, 1, "analysis"),
    "mol_stability_pct": ("Mol stable (%)", 100.0, 1, "analysis"),
    "validity_pct": ("Valid (%)", 100.0, 1, "analysis"),
    "uniqueness_pct": ("Unique (%)", 100.0, 1, "analysis"),
    "novelty_pct": ("Novel (%)", 100.0, 1, "analysis"),
    "js_rel_dist": ("JS(rel. dist)", 1.0, 3, "analysis"),
}
TABLE_METRICS = {
    "table1": ["nll"],
    "table2": ["nll", "atom_stability_pct", "mol_stability_pct", "validity_pct", "uniqueness_pct", "novelty_pct"],
    "table3": ["nll", "js_rel_dist"],
}
TITLES = {
    "table1": "Table 1: test NLL (nats) on DW4 and LJ13 against the number of training samples",
    "table2": "Table 2: QM9 test NLL (nats) and the stability of sampled molecules",
    "table3": "Table 3: QM9-positional test NLL (nats) and JS divergence of relative distances",
}
DATASET_NAMES = {"dw4": "DW4", "lj13": "LJ13", "qm9": "QM9", "qm9_positional": "QM9-positional"}
PAPER_ALIASES = {"released": "E-NF"}  # the released weights are the paper's E-NF model
NOT_RUN = "not run"
# The physical floor of a test NLL: the entropy H = <E> + log Z of the target density on the zero-centre-of-mass
# subspace (nats). No model's expected test NLL can lie below it; a value below it beyond its error is a bug.
# Computed by benchmarks/physical_floor.py (docs/protocol.md): DW4 by quadrature, log Z = 29.667, <E> = -22.542,
# H = 7.126; LJ13 (the paper's energy, ordered pairs) by annealed importance sampling, log Z = 59.85 +- 0.02,
# <E> = -42.97 +- 0.02, H = 16.88 +- 0.03.
FLOORS = {"dw4": 7.13, "lj13": 16.88}
FLOOR_METHOD = "Physical floor (entropy of the target)"


# -- reading results ----------------------------------------------------------------------------------------

def read_json(path: str | None) -> dict[str, Any] | None:
    """A JSON file's content, or None when there is no such file."""
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def measured(rec: dict[str, Any], metric: str) -> float | None:
    """The value of `metric` for one cell record, scaled for display, or None if not measured."""
    _, scale, _, source = METRICS[metric]
    data = read_json(rec.get(source))
    if data is None:
        return None
    key = metric.removesuffix("_pct")
    value = data.get(key)
    if value is None or isinstance(value, (str, bool)) or not math.isfinite(float(value)):
        return None
    return float(value) * scale


def collect(manifest: list[dict[str, Any]], table: str) -> pd.DataFrame:
    """One row per (cell record, metric) with the measured value (NaN when absent)."""
    rows = []
    for rec in manifest:
        ev = read_json(rec.get("evaluation")) or {}
        for metric in TABLE_METRICS[table]:
            if rec["kind"] == "data" and METRICS[metric][3] == "evaluation":
                continue
            value = measured(rec, metric)
            rows.append({"dataset": rec["dataset"], "model": rec["model"], "method": rec["label"],
                         "kind": rec["kind"], "n_train": str(rec.get("column", rec["n_train"])),
                         "n_used": str(rec["n_train"]), "seed": rec["seed"],
                         "metric": metric, "value": math.nan if value is None else value,
                         "sem": ev.get("nll_sem") if metric == "nll" else None,
                         "trace": ev.get("trace") if metric == "nll" else None,
                         "probes": ev.get("probes") if metric == "nll" else None,
                         "n_eval": ev.get("n") if metric == "nll" else None})
    return pd.DataFrame(rows)


def aggregate(long: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds for every (dataset, method, n_train, metric)."""
    keys = ["dataset", "model", "method", "kind", "n_train", "metric"]
    out = []
    for key, group in long.groupby(keys, sort=False):
        values = group["value"].dropna()
        sems = pd.to_numeric(group["sem"], errors="coerce").dropna()
        out.append({**dict(zip(keys, key)),
                    "mean": values.mean() if len(values) else math.nan,
                    "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                    "n_used": group["n_used"].iloc[0],
                    "n_seeds": int(len(values)), "seeds": ",".join(str(s) for s in group["seed"]),
                    "test_sem_mean": sems.mean() if len(sems) else math.nan,
                    "trace": ",".join(sorted({str(t) for t in group["trace"].dropna()})) or None,
                    "probes": ints(group["probes"]),
                    "n_eval": ints(group["n_eval"]),
                    "status": "measured" if len(values) else NOT_RUN})
    return pd.DataFrame(out)


def ints(values: pd.Series) -> str | None:
    """Distinct integer values, each value a number or such a '1,5' list, as '1,5' (None when there are none)."""
    found = sorted({int(float(part)) for v in values.dropna() for part in str(v).split(",")})
    return ",".join(map(str, found)) or None


def attach_paper(agg: pd.DataFrame, paper: pd.DataFrame, table: str) -> pd.DataFrame:
    """Add the paper's value and ours - paper to each aggregated row."""
    paper = paper[paper["table"] == table].copy()
    paper["n_train"] = paper["n_train"].fillna("").astype(str).str.replace(r"\.0$", "", regex=True)
    lookup = {(r.dataset, r.method, r.n_train, r.metric): float(r.value) for r in paper.itertuples()}
    values = []
    for r in agg.itertuples():
        method = PAPER_ALIASES.get(r.model, r.method)
        n_key = r.n_train if table == "table1" else ""
        values.append(lookup.get((r.dataset, method, n_key, r.metric), math.nan))
    agg = agg.copy()
    agg["paper"] = values
    agg["diff"] = agg["mean"] - agg["paper"]
    return agg


def add_paper_cells(agg: pd.DataFrame, paper: pd.DataFrame, table: str) -> pd.DataFrame:
    """Add every cell of the paper's table that this configuration did not run, marked "not run"."""
    paper = paper[paper["table"] == table].copy()
    paper["n_train"] = paper["n_train"].fillna("").astype(str).str.replace(r"\.0$", "", regex=True)
    have = {(r.dataset, r.method, r.n_train if table == "table1" else "", r.metric) for r in agg.itertuples()}
    extra = []
    for r in paper.itertuples():
        if (r.dataset, r.method, r.n_train, r.metric) in have:
            continue
        extra.append({"dataset": r.dataset, "model": "", "method": r.method, "kind": "paper",
                      "n_train": r.n_train or "all", "n_used": "", "metric": r.metric,
                      "mean": math.nan, "std": math.nan,
                      "n_seeds": 0, "seeds": "", "test_sem_mean": math.nan, "trace": None, "probes": None,
                      "n_eval": None, "status": NOT_RUN, "paper": float(r.value), "diff": math.nan})
    if not extra:
        return agg
    return pd.concat([agg, pd.DataFrame(extra)], ignore_index=True)


def add_floors(agg: pd.DataFrame, table: str) -> pd.DataFrame:
    """Table 1: a row with the physical floor of the NLL under every column of a data set that has one."""
    if table != "table1":
        return agg
    extra = [{"dataset": ds, "model": "", "method": FLOOR_METHOD, "kind": "floor", "n_train": n, "n_used": "",
              "metric": "nll", "mean": FLOORS[ds], "std": math.nan, "n_seeds": 0, "seeds": "",
              "test_sem_mean": math.nan, "trace": None, "probes": None, "n_eval": None, "status": "floor",
              "paper": math.nan, "diff": math.nan}
             for ds, n in dict.fromkeys(zip(agg["dataset"], agg["n_train"])) if ds in FLOORS]
    return pd.concat([agg, pd.DataFrame(extra)], ignore_index=True) if extra else agg


def order(agg: pd.DataFrame, paper: pd.DataFrame, table: str) -> pd.DataFrame:
    """Rows by data set, training size (numeric) and method: the paper's methods in its order, then extra
    methods (released weights, new rows) in the order of the config, then the "Data" row."""
    ds_rank = {ds: i for i, ds in enumerate(DATASET_NAMES)}
    paper_methods = list(dict.fromkeys(paper.loc[(paper["table"] == table) & (paper["method"] != "Data"),
                                                 "method"]))
    method_rank = {m: i for i, m in enumerate(paper_methods)}
    for i, m in enumerate(dict.fromkeys(agg["method"])):
        method_rank.setdefault(m, 100 + i)
    kinds = agg["kind"].fillna("")
    key = pd.DataFrame({
        "ds": agg["dataset"].map(lambda d: ds_rank.get(d, 99)),
        "n": agg["n_train"].map(lambda n: int(n) if str(n).isdigit() else 10**12),
        "m": [20_000 if k == "floor" else 10_000 if (k == "data" or m == "Data") else method_rank[m]
              for k, m in zip(kinds, agg["method"])]},
        index=agg.index)
    return agg.loc[key.sort_values(["ds", "n", "m"], kind="stable").index].reset_index(drop=True)


# -- what the configuration changes relative to the protocol -------------------------------------------------

# How a run is executed, not what it computes (the same model and gradients, to the solver's tolerance): never a
# deviation from the protocol.
EXECUTION_KEYS = ("flow.compile", "flow.adjoint")


def model_settings(sets: dict[str, Any] | None) -> dict[str, Any]:
    """An experiment's `set` without the execution-only keys."""
    return {k: v for k, v in (sets or {}).items() if k not in EXECUTION_KEYS}


def deviations(meta: dict[str, Any], protocol: dict[str, Any] | None) -> list[str]:
    """Sentences naming every way this configuration departs from the protocol configuration."""
    if not protocol:
        return ["(no protocol configuration found to compare with)"]
    out = []
    p_seeds = protocol.get("seeds", [])
    if len(meta["seeds"]) != len(p_seeds):
        out.append(f"{len(meta['seeds'])} seed(s) instead of the protocol's {len(p_seeds)}")
    for ds, exp in meta["experiments"].items():
        name = DATASET_NAMES.get(ds, ds)
        pexp = protocol.get("experiments", {}).get(ds, {})
        p_ns = [str(n) for n in pexp.get("n_train", [])]
        for n in exp["n_train"]:
            budget = exp["budgets"].get(n, {})
            column = exp.get("columns", {}).get(n, n)
            if column not in p_ns:
                out.append(f"{name}: training size {n} is not one of the protocol's ({', '.join(p_ns)})")
            elif column != n:
                out.append(f"{name} n={column}: trained on the first {n} training samples instead of "
                           + ("all" if column == "all" else column))
            pbudget = pexp.get("budgets", {}).get(column, {})
            phrases = {"epochs": "{} epoch(s) instead of the protocol's {}",
                       "batch_size": "batch size {} instead of the protocol's {}",
                       "eval_every": "validation every {} epoch(s) instead of every {}"}
            for key, phrase in phrases.items():
                if key in budget and pbudget.get(key) is not None and budget[key] != pbudget[key]:
                    out.append(f"{name} n={column}: " + phrase.format(budget[key], pbudget[key]))
            if budget.get("n_valid") is not None:
                out.append(f"{name} n={column}: validation on the first {budget['n_valid']} samples of its split")
        p_args = " ".join(str(a) for a in (protocol.get("data", {}).get(ds) or {}).get("args", []))
        if exp.get("data_args") and exp["data_args"] != p_args:
            quick = " (sampler's quick mode: not checked for equilibrium)" if "--quick" in exp["data_args"] else ""
            out.append(f"{name} data made by `enf data {ds} {exp['data_args']}`{quick}")
        for split, n in (exp.get("subset") or {}).items():
            out.append(f"{name}: only the first {n} samples of the {split} split")
        ev, pev = exp.get("evaluate") or {}, pexp.get("evaluate") or {}
        if ev.get("n") and ev.get("n") != pev.get("n"):
            out.append(f"{name}: test NLL on {ev['n']} test samples drawn at random instead of the whole test split")
        for key in ("trace", "probes"):
            if ev.get(key) is not None and pev.get(key) is not None and ev.get(key) != pev.get(key):
                out.append(f"{name}: evaluation {key} {ev[key]} instead of {pev[key]}")
        mine, theirs = model_settings(exp.get("set")), model_settings(pexp.get("set"))
        if mine != theirs:
            out.append(f"{name}: every model with settings {json.dumps(mine, sort_keys=True)} instead "
                       f"of {json.dumps(theirs, sort_keys=True)}")
        smp, psmp = exp.get("sample") or {}, pexp.get("sample") or {}
        if smp.get("n") and psmp.get("n") and smp["n"] != psmp["n"]:
            out.append(f"{name}: sample metrics from {smp['n']} samples instead of {psmp['n']}")
    pre, ppre = meta.get("pretrained"), protocol.get("pretrained") or {}
    if pre:
        if pre.get("sample", {}).get("n") != (ppre.get("sample") or {}).get("n", 10000):
            out.append(f"released weights: {pre['sample']['n']} samples instead of "
                       f"{(ppre.get('sample') or {}).get('n', 10000)}")
        n_eval = (pre.get("evaluate") or {}).get("n")
        if n_eval:
            out.append(f"released weights: test NLL on {n_eval} test molecules drawn at random")
    models = meta.get("model_settings", {})
    p_models = protocol.get("models", {})
    for model, settings in models.items():
        p_settings = {k: (p_models.get(model) or {}).get(k) for k in ("set", "args", "model")}
        if any((settings.get(k) or None) != (p_settings.get(k) or None) for k in ("set", "args", "model")):
            out.append(f"{meta['models'].get(model, model)}: settings {json.dumps(settings, sort_keys=True)}")
    return out


# -- rendering ----------------------------------------------------------------------------------------------

def fmt(value: float, decimals: int) -> str:
    """A number with fixed decimals, or '' for NaN."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def cell_text(row: pd.Series | None, decimals: int, tex: bool = False) -> str:
    """'mean ± sd (paper; diff)' for one cell; 'not run' when nothing was measured; a floor as its value."""
    if row is not None and row["status"] == "floor":
        return fmt(row["mean"], decimals)
    if row is None or row["status"] != "measured":
        paper = "" if row is None or math.isnan(row["paper"]) else f" ({fmt(row['paper'], decimals)})"
        return NOT_RUN + paper
    pm = r" $\pm$ " if tex else " ± "
    text = fmt(row["mean"], decimals)
    if not math.isnan(row["std"]):
        text += pm + fmt(row["std"], decimals)
    if not math.isnan(row["paper"]):
        sign = "+" if row["diff"] >= 0 else "−" if not tex else "-"
        text += f" ({fmt(row['paper'], decimals)}; {sign}{fmt(abs(row['diff']), decimals)})"
    expected = row.get("seeds_expected")
    if expected is not None and not pd.isna(expected) and 0 < row["n_seeds"] < expected:
        text += f" [{int(row['n_seeds'])} of {int(expected)} seeds]"
    return text


def grid(agg: pd.DataFrame, table: str, tex: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the rendered table (methods down, columns across)."""
    if table == "table1":
        columns = list(dict.fromkeys(zip(agg["dataset"], agg["n_train"])))
        header = ["Method"] + [f"{DATASET_NAMES.get(ds, ds)} n={n}" for ds, n in columns]
    else:
        metrics = [m for m in TABLE_METRICS[table] if m in set(agg["metric"])]
        columns = metrics
        header = ["Method"] + [METRICS[m][0] for m in metrics]
    body = []
    for method in dict.fromkeys(agg["method"]):
        sub = agg[agg["method"] == method]
        line = [method]
        for col in columns:
            if table == "table1":
                hit = sub[(sub["dataset"] == col[0]) & (sub["n_train"] == col[1]) & (sub["metric"] == "nll")]
                decimals = METRICS["nll"][2]
            else:
                hit = sub[sub["metric"] == col]
                decimals = METRICS[col][2]
            if hit.empty:
                line.append("–" if not tex else "--")
            else:
                line.append(cell_text(hit.iloc[0], decimals, tex))
        body.append(line)
    return header, body


TRACE_NAMES = {"exact": "exact trace", "hutchinson": "Hutchinson trace", "closed form": "closed-form divergence"}


def estimator_text(rows: pd.DataFrame) -> str:
    """How one data set's test NLLs were estimated, e.g. 'exact trace (closed-form divergence: Kernel dynamics),
    1000 test samples': the trace most rows used, and beside it any other with the methods that used it."""
    methods: dict[str, dict[str, None]] = {}  # trace -> the methods that used it, in order
    for method, traces in zip(rows["method"], rows["trace"]):
        for trace in str(traces).split(",") if isinstance(traces, str) else ():
            methods.setdefault(trace, {})[method] = None
    probes, n_eval = ints(rows["probes"]), ints(rows["n_eval"])

    def name(trace: str) -> str:
        return TRACE_NAMES.get(trace, f"{trace} trace") + (f", {probes} probe(s)" if trace == "hutchinson" else "")

    if not methods:
        return f"{n_eval} test samples"
    main = max(methods, key=lambda t: len(methods[t]))
    others = [f"{name(t)}: {', '.join(ms)}" for t, ms in methods.items() if t != main]
    return name(main) + (f" ({'; '.join(others)})" if others else "") + f", {n_eval} test samples"


def footer(meta: dict[str, Any], agg: pd.DataFrame, devs: list[str], code_versions: list[str]) -> list[str]:
    """The lines under a table: configuration, budget, cell format, estimators, deviations, code."""
    lines = [f"Configuration: {meta['config_name']} ({', '.join(meta['config_files'])}). "
             f"Budget: {meta['budget_note'] or 'as configured'}."]
    n_seeds = len(meta["seeds"])
    seeds = ", ".join(map(str, meta["seeds"]))
    lines.append(f"Cells: mean ± sample standard deviation over {n_seeds} seed(s) ({seeds})"
                 + (" (one seed: no standard deviation)" if n_seeds == 1 else "")
                 + "; in brackets the paper's value and ours − paper; '[k of n seeds]': only k seeds finished; "
                   "'not run (x)': no measurement here, x the paper's.")
    nll = agg[(agg["metric"] == "nll") & (agg["status"] == "measured")]
    if (agg["status"] == "floor").any():
        lines.append(f"{FLOOR_METHOD}: the lowest expected test NLL any model can reach, H = <E> + log Z of the "
                     "target density on the zero-centre-of-mass subspace. A finite test split has a floor of its own, "
                     "the mean of E + log Z over its configurations (what the target density itself scores there), "
                     "which differs from H by the split's sampling error; a number below that is a bug.")
    est = [f"{DATASET_NAMES.get(ds, ds)}: {estimator_text(nll[nll['dataset'] == ds])}"
           for ds in dict.fromkeys(nll["dataset"])]
    if est:
        lines.append("Test NLL estimator: " + "; ".join(est) + ".")
    if devs:
        lines.append("Deviations from the protocol (config/config.yaml): " + "; ".join(devs) + ".")
    else:
        lines.append("No deviation from the protocol's budgets.")
    if code_versions:
        lines.append("Code: " + "; ".join(code_versions) + f". Made {dt.datetime.now().isoformat(timespec='seconds')}.")
    return lines


def to_markdown(title: str, header: list[str], body: list[list[str]], notes: list[str]) -> str:
    """A GitHub-flavoured markdown table with its title and footer."""
    def esc(s: str) -> str:
        return s.replace("|", "\\|")
    lines = [f"### {title}", "", "| " + " | ".join(map(esc, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    lines += [""] + [f"{note}  " for note in notes]
    return "\n".join(lines) + "\n"


def tex_escape(s: str) -> str:
    """Escape LaTeX specials in plain text (the ± in cells is already math)."""
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("−", "-"), ("–", "--"), ("'", "'")):
        s = s.replace(a, b)
    return s


def to_latex(title: str, header: list[str], body: list[list[str]], notes: list[str]) -> str:
    """A booktabs table environment with the footer as a note below."""
    cols = "l" + "c" * (len(header) - 1)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(title)}}}", r"\small",
             rf"\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(tex_escape(h) for h in header) + r" \\",
             r"\midrule"]
    for row in body:
        cells = [tex_escape(row[0])] + [c.replace("%", r"\%") for c in row[1:]]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "", r"\par\footnotesize"]
    lines += [tex_escape(n) + r"\\" for n in notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def make_table(manifest: list[dict[str, Any]], meta: dict[str, Any], paper_csv: str | Path,
               protocol: dict[str, Any] | None, out_csv: str | Path, out_md: str | Path,
               out_tex: str | Path) -> pd.DataFrame:
    """Build and write one table; return the aggregated long-form frame (what the csv holds)."""
    table = meta["table"]
    long = collect(manifest, table)
    paper = pd.read_csv(paper_csv, dtype={"n_train": str})
    agg = attach_paper(aggregate(long), paper, table)
    agg = order(add_floors(add_paper_cells(agg, paper, table), table), paper, table)
    agg.insert(0, "table", table)
    agg["config_name"] = meta["config_name"]
    agg["budget"] = meta["budget_note"]
    agg["seeds_expected"] = len(meta["seeds"])
    devs = deviations(meta, protocol)
    versions = set()
    for rec in manifest:
        run = read_json(rec.get("run")) or {}
        if run.get("code_version"):
            versions.add(run["code_version"])
    notes = footer(meta, agg, devs, sorted(versions))
    agg["deviations"] = "; ".join(devs)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    agg.to_csv(out_csv, index=False, float_format="%.6g")
    header, body = grid(agg, table)
    Path(out_md).write_text(to_markdown(TITLES.get(table, table), header, body, notes))
    header, body = grid(agg, table, tex=True)
    Path(out_tex).write_text(to_latex(TITLES.get(table, table), header, body, notes))
    return agg


def load_protocol(path: str | Path | None) -> dict[str, Any] | None:
    """The protocol configuration (config/config.yaml), or None; with the budgets it leaves to enf filled in from
    enf, as the workflow fills them."""
    if not (path and Path(path).is_file()):
        return None
    from enf.data.datasets import protocol_budgets

    protocol = yaml.safe_load(Path(path).read_text())
    for ds, exp in (protocol.get("experiments") or {}).items():
        budgets = {str(k): v for k, v in (exp.get("budgets") or {}).items()}
        missing = [str(n) for n in exp.get("n_train", []) if str(n) not in budgets]
        exp["budgets"] = {**budgets, **protocol_budgets(ds, missing)}
    return protocol


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (the Snakemake entry is at the bottom)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--meta", required=True)
    parser.add_argument("--paper", required=True)
    parser.add_argument("--protocol", default=None)
    parser.add_argument("--out", required=True, help="output prefix: writes PREFIX.csv, .md and .tex")
    args = parser.parse_args(argv)
    make_table(json.loads(Path(args.manifest).read_text()), json.loads(Path(args.meta).read_text()), args.paper,
               load_protocol(args.protocol), f"{args.out}.csv", f"{args.out}.md", f"{args.out}.tex")
    return 0


def run_from_snakemake(smk: Any) -> None:
    """Entry point for Snakemake's `script:` directive."""
    with open(smk.log[0], "w") as log:
        sys.stderr = log
        make_table(smk.params.manifest, smk.params.meta, smk.input.paper, load_protocol(smk.params.protocol),
                   smk.output.csv, smk.output.md, smk.output.tex)
        print(Path(smk.output.md).read_text(), file=log)


if "snakemake" in globals():
    run_from_snakemake(globals()["snakemake"])
elif __name__ == "__main__":
    sys.exit(main())
