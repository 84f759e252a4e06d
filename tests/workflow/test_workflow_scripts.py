"""Unit tests of the workflow's helper scripts: tables, run-directory state keys, GPU slots (no Snakemake run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))

import make_tables  # noqa: E402
import prepare_run_dir  # noqa: E402


def _cell(tmp: Path, dataset: str, model: str, label: str, n: str, seed: int, nll: float | None,
          analysis: dict | None = None, trace: str = "exact") -> dict:
    base = tmp / dataset / model / n / str(seed)
    base.mkdir(parents=True)
    rec = {"dataset": dataset, "model": model, "label": label, "n_train": n, "seed": seed, "kind": "trained",
           "evaluation": None, "run": str(base / "metrics.json"), "config": None, "analysis": None}
    (base / "metrics.json").write_text(json.dumps({"code_version": "enf test"}))
    if nll is not None:
        (base / "test.json").write_text(json.dumps({"nll": nll, "nll_sem": 0.1, "n": 40, "trace": trace,
                                                    "probes": 1}))
        rec["evaluation"] = str(base / "test.json")
    if analysis is not None:
        (base / "analysis.json").write_text(json.dumps(analysis))
        rec["analysis"] = str(base / "analysis.json")
    return rec


def _meta(table: str, experiments: dict, seeds: list[int]) -> dict:
    return {"table": table, "config_name": "unit", "config_files": ["config/unit.yaml"],
            "budget_note": "REDUCED unit-test budget", "seeds": seeds, "experiments": experiments,
            "pretrained": None, "models": {"enf": "E-NF", "gnf": "GNF"}, "model_settings": {}}


def test_table1_mean_std_paper_diff_and_not_run(tmp_path: Path) -> None:
    manifest = [_cell(tmp_path, "dw4", "enf", "E-NF", "100", s, v) for s, v in ((0, 8.0), (1, 9.0), (2, 10.0))]
    manifest += [_cell(tmp_path, "dw4", "gnf", "GNF", "100", 0, None)]
    manifest += [_cell(tmp_path, "dw4", "gnf_att", "GNF-att", "100", s, v) for s, v in ((0, 11.0), (1, 12.0))]
    exps = {"dw4": {"n_train": ["100"], "evaluate": {"n": 40}, "sample": None,
                    "budgets": {"100": {"epochs": 2, "eval_every": 1, "batch_size": 100, "n_valid": 50}}}}
    protocol = make_tables.load_protocol(ROOT / "config" / "config.yaml")  # budgets: enf's protocol
    out = tmp_path / "t1"
    agg = make_tables.make_table(manifest, _meta("table1", exps, [0, 1, 2]), ROOT / "workflow" / "resources" /
                                 "paper_tables.csv", protocol, f"{out}.csv", f"{out}.md", f"{out}.tex")
    enf = agg[(agg["model"] == "enf") & (agg["n_train"] == "100")].iloc[0]
    assert enf["mean"] == pytest.approx(9.0) and enf["std"] == pytest.approx(1.0) and enf["n_seeds"] == 3
    assert enf["paper"] == pytest.approx(8.31) and enf["diff"] == pytest.approx(9.0 - 8.31)
    gnf = agg[agg["model"] == "gnf"].iloc[0]
    assert gnf["status"] == "not run" and pd.isna(gnf["mean"])
    md = Path(f"{out}.md").read_text()
    assert "9.00 ± 1.00 (8.31; +0.69) |" in md  # all three seeds: no mark
    assert "11.50 ± 0.71 (11.65; −0.15) [2 of 3 seeds]" in md  # a cell whose third seed has not finished
    assert "not run (11.93)" in md
    assert "REDUCED unit-test budget" in md and "Configuration: unit" in md
    assert "2 epoch(s) instead of the protocol's 1000" in md
    assert "DW4 n=100: validation on the first 50 samples of its split" in md
    assert "40 test samples drawn at random" in md
    # every paper column is present: the ones this config does not run say so
    assert "LJ13 n=10000" in md and "not run (30.41)" in md
    tex = Path(f"{out}.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex
    csv = pd.read_csv(f"{out}.csv")
    assert {"mean", "std", "paper", "diff", "config_name", "budget", "status"} <= set(csv.columns)


def test_table1_names_each_estimator_and_the_methods_that_used_it(tmp_path: Path) -> None:
    manifest = [_cell(tmp_path, "dw4", "enf", "E-NF", "100", 0, 8.0),
                _cell(tmp_path, "dw4", "gnf", "GNF", "100", 0, 11.0),
                _cell(tmp_path, "dw4", "kernel_dynamics", "Kernel dynamics", "100", 0, 8.7, trace="closed form"),
                _cell(tmp_path, "lj13", "enf", "E-NF", "10", 0, 25.0, trace="hutchinson")]
    exps = {ds: {"n_train": [n], "evaluate": {"n": 40}, "sample": None, "budgets": {n: {"epochs": 2}}}
            for ds, n in (("dw4", "100"), ("lj13", "10"))}
    out = tmp_path / "t1"
    make_tables.make_table(manifest, _meta("table1", exps, [0]), ROOT / "workflow" / "resources" / "paper_tables.csv",
                           make_tables.load_protocol(ROOT / "config" / "config.yaml"), f"{out}.csv", f"{out}.md",
                           f"{out}.tex")
    line = next(ln.rstrip() for ln in Path(f"{out}.md").read_text().splitlines() if ln.startswith("Test NLL"))
    assert line == ("Test NLL estimator: DW4: exact trace (closed-form divergence: Kernel dynamics), 40 test samples; "
                    "LJ13: Hutchinson trace, 1 probe(s), 40 test samples.")


def test_table2_stability_in_percent_and_released_row(tmp_path: Path) -> None:
    analysis = {"atom_stability": 0.85, "mol_stability": 0.05, "validity": 0.5, "uniqueness": 1.0,
                "novelty": None}
    manifest = [_cell(tmp_path, "qm9", "enf", "E-NF", "all", 0, -60.0, analysis)]
    rel = _cell(tmp_path, "qm9", "released", "E-NF (released)", "all", 0, -59.0, analysis)
    rel["kind"] = "released"
    data = {"dataset": "qm9", "model": "data", "label": "Data", "n_train": "all", "seed": 0, "kind": "data",
            "evaluation": None, "run": None, "config": None, "analysis": rel["analysis"]}
    exps = {"qm9": {"n_train": ["all"], "budgets": {"all": {"epochs": 100, "batch_size": 128}},
                    "evaluate": {}, "sample": {"n": 10000}}}
    out = tmp_path / "t2"
    agg = make_tables.make_table(manifest + [rel, data], _meta("table2", exps, [0]),
                                 ROOT / "workflow" / "resources" / "paper_tables.csv", None,
                                 f"{out}.csv", f"{out}.md", f"{out}.tex")
    atom = agg[(agg["model"] == "enf") & (agg["metric"] == "atom_stability_pct")].iloc[0]
    assert atom["mean"] == pytest.approx(85.0) and atom["paper"] == pytest.approx(85.0)
    released = agg[(agg["model"] == "released") & (agg["metric"] == "nll")].iloc[0]
    assert released["paper"] == pytest.approx(-59.7)  # compared with the paper's E-NF
    assert agg[(agg["model"] == "data") & (agg["metric"] == "nll")].empty
    assert agg[(agg["model"] == "enf") & (agg["metric"] == "novelty_pct")].iloc[0]["status"] == "not run"
    assert "one seed: no standard deviation" in Path(f"{out}.md").read_text()


def test_prepare_run_dir_keeps_state_only_for_the_same_key(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert prepare_run_dir.prepare(run, "a") == "fresh"
    (run / "state").mkdir()
    (run / "state" / "last.pt").write_text("x")
    assert prepare_run_dir.prepare(run, "a") == "resume"
    assert (run / "state" / "last.pt").is_file()
    assert prepare_run_dir.prepare(run, "b") == "stale"
    assert not (run / "state").exists() and (run / "state.stale" / "last.pt").is_file()
    assert (run / "state.key").read_text().strip() == "b"


def _gpu_slot(tmp: Path, env: dict, sleep: float) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPTS / "gpu_slot.py"), "--lock-dir", str(tmp / "locks"), "--", sys.executable,
           "-c", f"import os, time; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')); time.sleep({sleep})"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_gpu_slot_gives_each_job_its_own_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"}
    env.pop("SLURM_JOB_ID", None)
    procs = [_gpu_slot(tmp_path, env, 1.5) for _ in range(2)]
    time.sleep(0.5)
    third = _gpu_slot(tmp_path, env, 0)  # waits until one of the first two exits
    outs = [p.communicate(timeout=60) for p in procs]
    assert sorted(o[0].strip() for o in outs) == ["3", "5"]
    out, err = third.communicate(timeout=60)
    assert out.strip() in ("3", "5") and "busy" in err


def test_gpu_slot_leaves_cpu_and_slurm_jobs_alone(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    assert _gpu_slot(tmp_path, env, 0).communicate(timeout=60)[0].strip() == ""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "7", "SLURM_JOB_ID": "1"}
    assert _gpu_slot(tmp_path, env, 0).communicate(timeout=60)[0].strip() == "7"


def _finished_run(results: Path, ds: str, model: str, n: int | str, seed: int, nll: float,
                  resumed: int | None) -> None:
    """What the workflow leaves for one evaluated cell: run files, evaluation, benchmarks, training log."""
    rel = Path(ds) / model / f"n{n}" / f"seed{seed}"
    run = results / "runs" / rel
    run.mkdir(parents=True)
    for name in ("config.yaml", "history.csv", "training_curves.png", "checkpoint.pt"):
        (run / name).write_text(name)
    (run / "metrics.json").write_text(json.dumps({"best_epoch": 7, "epochs": 10, "config_hash": "abc",
                                                  "code_version": "enf test", "mean_nfe": 20.0}))
    (results / "eval" / rel).mkdir(parents=True)
    (results / "eval" / rel / "test.json").write_text(json.dumps({"nll": nll, "nll_sem": 0.1, "trace": "exact",
                                                                  "n": 1000, "probes": 1}))
    for kind, cpu in (("train", 100.0), ("evaluate", 5.0)):
        (results / "benchmarks" / kind / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / "benchmarks" / kind / f"{rel}.tsv").write_text(f"s\tcpu_time\n{2 * cpu}\t{cpu}\n")
    (results / "logs" / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
    log = f"[enf train] resuming from {run}/state/last.pt after epoch {resumed}\n" if resumed else ""
    (results / "logs" / "train" / f"{rel}.log").write_text(log + "[enf train] done\n")


def test_collect_cells_copies_evidence_and_tabulates_it(tmp_path: Path) -> None:
    import collect_cells

    results, out = tmp_path / "results", tmp_path / "evidence"
    _finished_run(results, "dw4", "enf", 100, 0, 8.0, None)
    _finished_run(results, "dw4", "enf", 100, 1, 8.2, 500)
    _finished_run(results, "dw4", "gnf", 100, 0, 11.0, None)
    assert collect_cells.main(["--results", str(results), "--config", str(ROOT / "config" / "config.yaml"),
                               "--out", str(out)]) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert list(cells.columns) == list(collect_cells.COLUMNS) and len(cells) == 3
    resumed = cells.set_index(["model", "seed"])["resumed_after_epoch"]
    assert resumed[("enf", 1)] == 500 and pd.isna(resumed[("enf", 0)])
    assert (cells["train_cpu_seconds"] == 100.0).all() and (cells["wall_seconds"] == 210.0).all()
    assert (out / "dw4/enf/n100/seed0/checkpoint.pt").is_file()  # E-NF keeps its checkpoint
    assert not (out / "dw4/gnf/n100/seed0/checkpoint.pt").exists()  # baselines do not
    md = (out / "table1.md").read_text()
    assert "8.10 ± 0.14 (8.31; −0.21) [2 of 3 seeds]" in md and "11.00 (11.93; −0.93) [1 of 3 seeds]" in md
    assert "not run (30.41)" in md and "| 16.88 |" in md
    # per cell: the resumed run is left out of the training mean; the authors' estimate is enf's time x 3.61
    assert "| E-NF | DW4 | 100 | 2 | 0.03 (1 of 2 runs) | 0.1 | 0.10 |" in md
    assert "| GNF | DW4 | 100 | 1 | 0.03 | 0.1 | – |" in md
    again = (out / "cells.csv").read_text()  # collecting again changes nothing
    assert collect_cells.main(["--results", str(results), "--config", str(ROOT / "config" / "config.yaml"),
                               "--out", str(out)]) == 0
    assert (out / "cells.csv").read_text() == again


def test_collect_cells_tabulates_flow_matching_beside_likelihood_with_cpu_hours(tmp_path: Path) -> None:
    """Flow-matching runs collected with the switch's config get its label; --beside adds another folder's runs
    to the table (not copied); each row's CPU hours close the table."""
    import collect_cells

    likelihood, fm = tmp_path / "likelihood", tmp_path / "fm"
    _finished_run(tmp_path / "res_ml", "dw4", "enf", 100, 0, 8.0, None)
    configs = [str(ROOT / "config" / "config.yaml")]
    assert collect_cells.main(["--results", str(tmp_path / "res_ml"), "--config", *configs, "--out",
                               str(likelihood)]) == 0
    _finished_run(tmp_path / "res_fm", "dw4", "enf_fm", 100, 0, 7.5, None)
    _finished_run(tmp_path / "res_fm", "dw4", "enf_fm", 100, 1, 7.7, None)
    boltzmann = tmp_path / "res_fm" / "boltzmann" / "dw4" / "enf_fm" / "n100" / "seed0"
    boltzmann.mkdir(parents=True)
    (boltzmann / "eval.json").write_text(json.dumps({"boltzmann": {
        "reverse_ess": 0.25, "forward_ess": 0.1, "log_z_reverse": 29.5, "log_z_forward": 29.8, "n_samples": 10000,
        "nfe_per_sampling_solve": 98.0, "js_energy_model": 0.01, "js_distance_model": 0.002}}))
    (boltzmann / "eval_boltzmann.png").write_text("png")
    assert collect_cells.main(["--results", str(tmp_path / "res_fm"), "--config", *configs,
                               str(ROOT / "config" / "flow_matching.yaml"), "--out", str(fm), "--checkpoints",
                               "enf_fm", "--beside", str(likelihood)]) == 0
    assert len(pd.read_csv(fm / "cells.csv")) == 2 and not (fm / "dw4" / "enf").exists()
    md = (fm / "table1.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| E-NF, flow matching (ours) |"))
    assert "| 7.60 ± 0.14 [2 of 3 seeds] |" in row
    assert "(config/config.yaml + config/flow_matching.yaml)" in md and str(ROOT) not in md
    assert "| E-NF | 8.00 (8.31; −0.31) [1 of 3 seeds]" in md
    assert "- E-NF, flow matching (ours): 2 run(s), 0.06 CPU h training + 0.00 CPU h test evaluation" in md
    # the row's own settings (objective, learning rate, budgets) under the table, the likelihood rows' none
    footer = next(line for line in md.splitlines() if line.startswith("Deviations from the protocol"))
    assert '"--objective", "flow_matching"' in footer and '"train.lr": 0.002' in footer
    assert '"100000": {"epochs": 30' in footer and "E-NF: settings" not in footer
    assert "- E-NF: 1 run(s), 0.03 CPU h training" in md
    assert (fm / "dw4/enf_fm/n100/seed0/checkpoint.pt").is_file()
    cell = fm / "dw4" / "enf_fm" / "n100" / "seed0"
    assert (cell / "boltzmann.json").is_file() and (cell / "boltzmann.png").is_file()
    cells = pd.read_csv(fm / "cells.csv").set_index("seed")
    assert cells.loc[0, "reverse_ess"] == 0.25 and pd.isna(cells.loc[1, "reverse_ess"])
    assert "| E-NF, flow matching (ours) | DW4 | 100 | 1 | 25.00 % | 10 % | 29.50 / 29.80 | 10000 | 98 |" in (
        fm / "table1.md").read_text()


def test_collect_cells_makes_table3_from_qm9_positional_runs_and_their_analysis(tmp_path: Path) -> None:
    """A QM9-positional run (n = all) joins cells.csv with its samples' JS divergence and gets its own Table 3;
    Table 1 still lists the particle cells, sizes in numeric order."""
    import collect_cells

    results, out = tmp_path / "results", tmp_path / "fm"
    _finished_run(results, "qm9_positional", "enf_fm", "all", 0, -72.5, None)
    _finished_run(results, "dw4", "enf_fm", 1000, 0, 7.8, None)
    _finished_run(results, "dw4", "enf_fm", 100, 0, 8.0, None)
    samples = results / "samples" / "qm9_positional" / "enf_fm" / "nall" / "seed0"
    (samples / "figures").mkdir(parents=True)
    (samples / "analysis.json").write_text(json.dumps({"js_rel_dist": 0.0123, "n_molecules": 1000}))
    (samples / "figures" / "rel_dist_hist.png").write_text("png")
    configs = [str(ROOT / "config" / "config.yaml"), str(ROOT / "config" / "flow_matching.yaml")]
    assert collect_cells.main(["--results", str(results), "--config", *configs, "--out", str(out),
                               "--checkpoints", "enf_fm"]) == 0
    cells = pd.read_csv(out / "cells.csv", dtype={"n_train": str})
    assert list(cells["n_train"]) == ["100", "1000", "all"]
    qm9 = cells.set_index("dataset").loc["qm9_positional"]
    assert qm9["js_rel_dist"] == 0.0123 and qm9["analysed_samples"] == 1000 and qm9["test_nll"] == -72.5
    cell = out / "qm9_positional" / "enf_fm" / "nall" / "seed0"
    assert (cell / "analysis.json").is_file() and (cell / "rel_dist_hist.png").is_file()
    table3 = (out / "table3.md").read_text()
    row = next(line for line in table3.splitlines() if line.startswith("| E-NF, flow matching (ours) |"))
    assert "-72.50 [1 of 3 seeds]" in row.replace("−", "-") and "0.012 [1 of 3 seeds]" in row
    assert "| E-NF | not run (-70.20) | not run (0.006) |" in table3.replace("−", "-")
    assert "qm9" not in (out / "table1.md").read_text().lower().split("cpu cost")[0]
    assert collect_cells.main(["--results", str(results), "--config", *configs, "--out", str(out),
                               "--checkpoints", "enf_fm"]) == 0  # collecting again changes nothing
    assert pd.read_csv(out / "cells.csv", dtype={"n_train": str}).equals(cells)


def test_readme_evidence_fills_its_block_from_collected_cells(tmp_path: Path, capsys) -> None:
    import collect_cells
    import readme_evidence

    results, out = tmp_path / "results", tmp_path / "evidence"
    _finished_run(results, "dw4", "enf", 100, 0, 8.0, None)
    _finished_run(results, "dw4", "gnf", 100, 0, 11.0, None)
    _finished_run(results, "qm9_positional", "enf", "all", 0, -70.0, None)  # a Table 3 cell: not in this block
    assert collect_cells.main(["--results", str(results), "--config", str(ROOT / "config" / "config.yaml"),
                               "--out", str(out)]) == 0
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- t1: start -->\nold\n<!-- t1: end -->\nafter\n")
    assert readme_evidence.main([str(readme), "--block", "t1", "--folder", str(out), "--rows", "E-NF",
                                 "--model", "enf", "--cost"]) == 0
    text = readme.read_text()
    block = text.split("<!-- t1: start -->\n")[1].split("\n<!-- t1: end -->")[0]
    assert text.startswith("intro\n") and text.endswith("after\n") and "old" not in text
    rows = [line.split("|")[1].strip() for line in block.splitlines() if line.startswith("| ")]
    assert rows == ["Method", "E-NF", "Physical floor (entropy of the target)"]  # GNF left out
    assert "- DW4 n = 100: seed 0: 8.00 +- 0.10 (epoch 7; 2 CPU min training, 5 s test)." in block
    assert "- E-NF: 1 run(s), 0.03 CPU h training" in block
    assert "QM9" not in block and "-70.00" not in block
    before = readme.read_text()
    assert readme_evidence.main([str(readme), "--block", "missing", "--folder", str(out), "--rows", "E-NF",
                                 "--model", "enf"]) == 2
    assert readme.read_text() == before and "no block 'missing'" in capsys.readouterr().err
