"""scripts/setup-env.sh: each kind names its requirements file and environment; the GPU kind gets a CUDA torch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup-env.sh"


def setup_env(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The script in dry-run mode (nothing is created or downloaded)."""
    full = {k: v for k, v in os.environ.items() if k != "ENF_VENV"}
    full.update(ENF_SETUP_DRY_RUN="1", **env)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=60)


def test_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.parametrize("kind, venv", [("cpu", ".venv"), ("test", ".venv"), ("gpu", ".venv-gpu")])
def test_each_kind_resolves_its_requirements(kind: str, venv: str) -> None:
    res = setup_env(kind)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"kind={kind} venv={venv} requirements=envs/requirements-{kind}.txt"
    assert (ROOT / "envs" / f"requirements-{kind}.txt").is_file()


def test_default_kind_and_venv_override() -> None:
    assert setup_env().stdout.strip() == "kind=test venv=.venv requirements=envs/requirements-test.txt"
    assert setup_env("gpu", ENF_VENV="/scratch/enf-gpu").stdout.strip().split()[1] == "venv=/scratch/enf-gpu"


@pytest.mark.parametrize("kind", ["cuda", "gpu2", "../cpu"])
def test_unknown_kind_exits_2(kind: str) -> None:
    res = setup_env(kind)
    assert res.returncode == 2 and "unknown kind" in res.stderr and not res.stdout


def test_gpu_requirements_pin_a_cuda_torch_and_keep_the_cpu_pin() -> None:
    """The GPU file adds the PyTorch CUDA index and the CUDA build to the CPU pins; the CPU pin stays as it is."""
    cpu = (ROOT / "envs" / "requirements-cpu.txt").read_text().splitlines()
    assert "torch==2.13.0" in cpu
    gpu = [line.strip() for line in (ROOT / "envs" / "requirements-gpu.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    index = [line for line in gpu if line.startswith("--extra-index-url")]
    torch_pin = [line for line in gpu if line.startswith("torch==")]
    assert len(index) == 1 and index[0].startswith("--extra-index-url https://download.pytorch.org/whl/cu")
    flavour = index[0].rsplit("/", 1)[1]
    assert torch_pin == [f"torch==2.13.0+{flavour}"] and "-r requirements-cpu.txt" in gpu
