"""The SLURM profile's resubmission of training, and runtimes that fit common partition limits (48 h)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "profiles" / "slurm"
MAX_RUNTIME = 2880  # minutes: 48 h, a common partition limit; longer trainings run as several resumed jobs

# A rule named like the workflow's training that succeeds at its 4th attempt, and another rule that always fails.
SNAKEFILE = """
rule all:
    input: "train.done", "other.done"

rule train:
    output: "train.done"
    shell: "echo x >> train.attempts; [ $(wc -l < train.attempts) -ge {succeed_at} ] && touch {{output}} || exit 1"

rule other:
    output: "other.done"
    shell: "echo x >> other.attempts; exit 1"
"""


def attempts(tmp_path: Path, *args: str, succeed_at: int = 4) -> tuple[int, int]:
    """Run the toy workflow with the SLURM profile on the local executor; (train attempts, other attempts)."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(succeed_at=succeed_at))
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(tmp_path), "--snakefile", str(tmp_path / "Snakefile"),
           "--profile", str(PROFILE), "--executor", "local", "--cores", "1", "--latency-wait", "1", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode != 0, res.stderr[-3000:]  # `other` always fails
    count = [len((tmp_path / f"{rule}.attempts").read_text().splitlines()) for rule in ("train", "other")]
    return count[0], count[1]


def test_training_is_resubmitted_until_done_other_rules_once(tmp_path: Path) -> None:
    """Training (preemptible-retries: 10) runs again until it finishes; every other rule once more (retries: 1)."""
    assert attempts(tmp_path) == (4, 2)
    assert (tmp_path / "train.done").is_file()


def test_resubmission_switched_off(tmp_path: Path) -> None:
    """--retries 0 --preemptible-retries 0: each job runs once (what the SLURM cancel-and-resume test uses)."""
    assert attempts(tmp_path, "--retries", "0", "--preemptible-retries", "0") == (1, 1)


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/quick.yaml", "config/smoke.yaml"])
def test_every_runtime_fits_a_48_hour_job(configfile: str) -> None:
    """Every job's runtime (minutes) is at most 48 h: a longer training is resubmitted and resumes instead."""
    cfg = yaml.safe_load((ROOT / configfile).read_text())
    runtimes = {f"resources.{rule}": res["runtime"] for rule, res in cfg["resources"].items() if "runtime" in res}
    runtimes.update({f"experiments.{ds}.resources": exp["resources"]["runtime"]
                     for ds, exp in cfg["experiments"].items() if "runtime" in exp.get("resources", {})})
    assert runtimes and all(0 < minutes <= MAX_RUNTIME for minutes in runtimes.values()), runtimes
