"""Dry runs of the Snakemake workflow: every configuration builds its DAG, bad configs fail by name, targets select."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAKEFILE = ROOT / "Snakefile"
CONFIGS = ["config/config.yaml", "config/quick.yaml", "config/smoke.yaml"]


def snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run snakemake on this repository's Snakefile in `workdir` (an empty folder: nothing is ever built)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    counts = {}
    for line in output.split("Job stats:")[-1].splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.mark.parametrize("configfile", CONFIGS)
def test_dry_run_every_config(tmp_path: Path, configfile: str) -> None:
    res = snakemake(tmp_path, "-n", "--quiet", "rules", "--configfile", str(ROOT / configfile))
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    for rule in ("data_mcmc", "data_qm9pack", "data_split", "train", "evaluate", "sample", "analyze", "tables",
                 "track", "mlflow_init", "figure_nll", "import_pretrained", "analyze_data"):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    assert counts["tables"] == 3
    assert counts["track"] == counts["evaluate"]  # one MLflow logging job per evaluated run
    if configfile == "config/config.yaml":  # every cell of Tables 1-3, 3 seeds
        assert counts["train"] == (6 * 8 + 3 + 6) * 3


def test_invalid_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config" / "smoke.yaml").read_text().replace("seeds: [0]", "seeds: [zero]"))
    res = snakemake(tmp_path, "-n", "--configfile", str(bad))
    assert res.returncode != 0
    assert "invalid config at seeds[0]" in res.stdout + res.stderr
    override = tmp_path / "override.yaml"
    override.write_text("experiments:\n  qm9:\n    models: [enf, nosuchmodel]\n")
    res = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / "smoke.yaml"), str(override))
    assert res.returncode != 0 and "experiments.qm9.models lists 'nosuchmodel'" in res.stdout + res.stderr


def test_one_table_builds_only_what_it_needs(tmp_path: Path) -> None:
    res = snakemake(tmp_path, "table1", "-n", "--quiet", "rules", "--configfile",
                    str(ROOT / "config" / "smoke.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    assert counts["data_mcmc"] == 2 and counts["tables"] == 1  # DW4 and LJ13 only
    assert "data_qm9pack" not in counts
    assert "sample" not in counts and "import_pretrained" not in counts and "analyze_data" not in counts


def test_local_profile_is_accepted(tmp_path: Path) -> None:
    res = snakemake(tmp_path, "dataset_dw4", "-n", "--quiet", "rules", "--workflow-profile",
                    str(ROOT / "profiles" / "local"), "--configfile", str(ROOT / "config" / "smoke.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    assert counts["data_mcmc"] == 1 and "tables" not in counts and "data_qm9pack" not in counts


def test_slurm_profile_requests_gpus_for_training(tmp_path: Path) -> None:
    res = snakemake(tmp_path, "dataset_dw4", "-n", "--profile", str(ROOT / "profiles" / "slurm"),
                    "--configfile", str(ROOT / "config" / "smoke.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    blocks = (res.stdout + res.stderr).split("\nrule ")
    train = [b for b in blocks if b.startswith("train:")]
    data = [b for b in blocks if b.startswith("data_mcmc:")]
    assert train and all("gpu=1" in b and "slurm_partition=" in b for b in train)
    assert data and all("gpu=0" in b for b in data)


def test_flow_matching_switch_adds_its_rows_and_the_ess_table(tmp_path: Path) -> None:
    """config/flow_matching.yaml over smoke: E-NF trained by flow matching (model `enf_fm`) joins Tables 1 and 3,
    and every DW4/LJ13 run gets a Boltzmann evaluation feeding tables/ess.*; without it neither appears."""
    smoke = str(ROOT / "config" / "smoke.yaml")
    plain = snakemake(tmp_path, "-n", "--configfile", smoke)
    assert plain.returncode == 0, plain.stderr[-3000:]
    res = snakemake(tmp_path, "-n", "--configfile", smoke, str(ROOT / "config" / "flow_matching.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    out, base = res.stdout + res.stderr, plain.stdout + plain.stderr
    counts, base_counts = job_counts(out), job_counts(base)
    assert counts.get("boltzmann", 0) >= 2 and counts.get("ess_table") == 1, counts
    assert "boltzmann" not in base_counts and "ess_table" not in base_counts
    assert counts["train"] > base_counts["train"]
    assert "/enf_fm/" in out and "/enf_fm/" not in base
    assert "tables/ess.csv" in out


def test_flow_matching_rows_train_with_their_own_budgets(tmp_path: Path) -> None:
    """In the paper configuration the flow-matching row keeps the protocol's epochs but validates ten times per
    run at its own learning rate (flow_matching.budgets / .set); the likelihood row of the same cell is unchanged,
    and each data set's Boltzmann evaluation draws its own number of samples (boltzmann.n_samples per data set)."""
    fm = str(ROOT / "config" / "flow_matching.yaml")
    override = tmp_path / "override.yaml"
    override.write_text("boltzmann:\n  n_samples: {dw4: 10000, lj13: 300}\n")
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(ROOT / "config" / "config.yaml"), fm, str(override), "--",
                    "results/runs/dw4/enf_fm/n100/seed0/checkpoint.pt", "results/runs/dw4/enf/n100/seed0/checkpoint.pt",
                    "results/boltzmann/dw4/enf_fm/n100/seed0/eval.json",
                    "results/boltzmann/lj13/enf_fm/n10/seed0/eval.json")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    commands = {m: next(line for line in out.splitlines() if "enf train" in line and f"/{m}/n100/seed0 " in line)
                for m in ("enf", "enf_fm")}
    assert "--epochs 1000" in commands["enf_fm"] and "--epochs 1000" in commands["enf"]
    assert "--set=train.eval_every=100" in commands["enf_fm"] and "--set=train.lr=0.002" in commands["enf_fm"]
    assert "--objective flow_matching" in commands["enf_fm"]
    assert "--set=train.eval_every=20" in commands["enf"] and "train.lr" not in commands["enf"]
    boltzmann = {ds: next(line for line in out.splitlines() if "--boltzmann " in line and f"/{ds}/enf_fm/" in line)
                 for ds in ("dw4", "lj13")}
    assert "--boltzmann 10000 " in boltzmann["dw4"] and "--boltzmann 300 " in boltzmann["lj13"]


def test_boltzmann_samples_per_data_set_must_name_each(tmp_path: Path) -> None:
    override = tmp_path / "override.yaml"
    override.write_text("boltzmann:\n  n_samples: {dw4: 50}\n")
    res = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / "smoke.yaml"),
                    str(ROOT / "config" / "flow_matching.yaml"), str(override))
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "config: boltzmann.n_samples gives no number for 'lj13'" in out, out[-3000:]


def test_budgets_come_from_enf_unless_the_config_gives_them(tmp_path: Path) -> None:
    """config.yaml gives no budgets: each training size trains at enf's protocol budget (enf/data/datasets.py),
    and a size the config does give a budget trains at that one."""
    override = tmp_path / "override.yaml"
    override.write_text('experiments:\n  dw4:\n    budgets:\n'
                        '      "100": {epochs: 7, eval_every: 1, batch_size: 50, n_valid: 64,\n'
                        '              set: {train.lr: 0.0007}}\n')
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(ROOT / "config" / "config.yaml"), str(override), "--",
                    "results/runs/dw4/enf/n100/seed0/checkpoint.pt", "results/runs/dw4/enf/n1000/seed0/checkpoint.pt",
                    "results/runs/qm9/enf/nall/seed0/checkpoint.pt")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    commands = {n: next(line for line in out.splitlines() if "enf train" in line and f"/{n}/seed0 " in line)
                for n in ("dw4/enf/n100", "dw4/enf/n1000", "qm9/enf/nall")}
    assert ("--epochs 7 --set=train.batch_size=50 --set=train.eval_every=1 --set=train.n_valid=64 "
            in commands["dw4/enf/n100"])
    assert "--epochs 300 --set=train.batch_size=100 --set=train.eval_every=5 " in commands["dw4/enf/n1000"]
    assert "--set=train.lr=0.0007" in commands["dw4/enf/n100"]  # a budget's own settings: that cell only
    assert "train.lr" not in commands["dw4/enf/n1000"]
    assert "--epochs 100 --set=train.batch_size=128 --out" in commands["qm9/enf/nall"]


@pytest.mark.parametrize("override, where, what", [
    ("experiments:\n  dw4:\n    set: {train.lrr: 1}\n", "experiments.dw4.set", "unknown config key 'train.lrr'"),
    ("models:\n  enf: {label: E-NF, set: {flow.method: euler2}}\n", "models.enf.set", "flow.method must be one of"),
    ("experiments:\n  lj13:\n    set: {train.amsgrad: maybe}\n", "experiments.lj13.set", "train.amsgrad must be"),
    ('experiments:\n  dw4:\n    budgets:\n      "100": {set: {flow_matching.pairing: hungarian}}\n',
     "experiments.dw4.budgets.100.set", "flow_matching.pairing must be one of"),
])
def test_bad_enf_settings_fail_the_dry_run_by_name(tmp_path: Path, override: str, where: str, what: str) -> None:
    """Every trained cell's enf config is resolved when the workflow is parsed, not when its job runs."""
    bad = tmp_path / "override.yaml"
    bad.write_text(override)
    res = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / "smoke.yaml"), str(bad))
    out = res.stdout + res.stderr
    assert res.returncode != 0 and f"config: {where}: {what}" in out, out[-3000:]


def test_an_outdir_with_a_space_is_quoted_in_every_command(tmp_path: Path) -> None:
    """Each shell command keeps a path with a space in one word (else it breaks, or writes a stray file)."""
    import shlex

    outdir = "out dir/smo ke"
    override = tmp_path / "override.yaml"
    override.write_text(f"outdir: {outdir!r}\n")
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(ROOT / "config" / "smoke.yaml"), str(override))
    assert res.returncode == 0, res.stderr[-3000:]
    commands = [line.strip() for line in (res.stdout + res.stderr).splitlines()
                if outdir in line and line.strip().split(":")[0] not in ("input", "output", "log", "benchmark",
                                                                         "reason", "wildcards", "resources")]
    ran = {rule for rule in ("enf data", "subset_data.py", "enf train", "enf evaluate", "enf sample", "enf analyze",
                             "enf import-en-flows", "track_mlflow.py init", "track_mlflow.py train")
           if any(rule in command for command in commands)}
    assert len(ran) == 9, ran
    for command in commands:
        words = shlex.split(command)
        assert not any(word in ("out", "dir/smo") or word.startswith(("ke/", "dir/smo ")) for word in words), command
