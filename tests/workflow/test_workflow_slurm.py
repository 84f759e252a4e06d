"""The SLURM profile on a real SLURM cluster (opt-in: ENF_TEST_SLURM=1 and a running cluster; minutes).

Runs one smoke cell (data -> train -> evaluate -> MLflow) with `--profile profiles/slurm`: data, training and
evaluation go through sbatch, MLflow logging runs on the submitting host. GPUs are switched off (gpu=0) because
the test machine has none; the profile's GPU request is checked by test_workflow_dryrun.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("ENF_TEST_SLURM") != "1" or shutil.which("sbatch") is None,
                       reason="set ENF_TEST_SLURM=1 on a machine with a SLURM cluster"),
]


def test_one_cell_through_slurm(tmp_path: Path) -> None:
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                               check=True).stdout.split()[0].rstrip("*")
    target = "results/smoke/tracking/dw4/enf/n100/seed0/mlflow.json"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--profile", str(ROOT / "profiles" / "slurm"), "--configfile", str(ROOT / "config" / "smoke.yaml"),
           "--default-resources", f"slurm_partition={partition}", "--slurm-status-command", "squeue",
           "--slurm-init-seconds-before-status-checks", "5", "--set-resources", "train:gpu=0", "evaluate:gpu=0",
           "--jobs", "2", "--", target]
    # the plugin can wait forever on a broken status query: never without a hard timeout
    res = subprocess.run(["timeout", "-s", "KILL", "1500", *cmd], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert (tmp_path / target).is_file()
    for rule in ("data_mcmc", "train", "evaluate"):
        assert f"rule {rule}:" in out and "submitted with SLURM jobid" in out
    assert "localrule track:" in out
