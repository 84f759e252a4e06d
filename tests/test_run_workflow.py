"""scripts/run-workflow.sh: one machine's entry point refuses cluster profiles and unknown environments up front."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run-workflow.sh"


@pytest.mark.parametrize("args", [["--profile", "profiles/slurm"], ["--profile=profiles/slurm"],
                                  ["-n", "--executor", "slurm"]])
def test_cluster_profiles_are_refused_with_the_slurm_command(args: list[str]) -> None:
    res = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "snakemake --profile profiles/slurm" in res.stderr and not res.stdout


def test_unknown_environment_is_refused() -> None:
    res = subprocess.run(["bash", str(SCRIPT), "-n"], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "ENF_ENV": "rocm"})
    assert res.returncode == 2 and "ENF_ENV must be cpu or gpu" in res.stderr
