"""Device choice: `auto` uses CUDA or the CPU, but a process given a GPU it cannot use stops with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from enf import device as devmod
from enf.cli import main
from enf.device import choose_device, gpu_request, pick_device
from enf.errors import EnfError

ROOT = Path(__file__).resolve().parents[1]
GPU_VARS = (*devmod.GPU_LIST_VARS, devmod.GPU_COUNT_VAR, devmod.ALLOW_CPU)
CPU_BUILD = "setup-env.sh gpu"  # what a refusal on a CPU-only torch tells the user to do
NO_CUDA = "cannot use CUDA here"  # what a refusal on a CUDA torch without a usable GPU says


@pytest.fixture
def torch_kind(monkeypatch: pytest.MonkeyPatch):
    """Clear the GPU variables of the environment; return a function that makes torch look like a given build."""
    for var in GPU_VARS:
        monkeypatch.delenv(var, raising=False)

    def make(build: str, gpus: int = 0) -> None:
        """build: 'cpu' (a CPU-only wheel) or 'cuda' (a CUDA wheel) with `gpus` usable GPUs."""
        monkeypatch.setattr(torch.version, "cuda", None if build == "cpu" else "12.8")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)

    return make


@pytest.mark.parametrize("name, env, build, gpus, expected", [
    # nothing asked: auto is the CPU on any torch without a usable GPU
    ("auto", {}, "cpu", 0, "cpu"),
    ("auto", {}, "cuda", 0, "cpu"),
    ("auto", {"CUDA_VISIBLE_DEVICES": ""}, "cpu", 0, "cpu"),
    ("auto", {"CUDA_VISIBLE_DEVICES": "-1"}, "cpu", 0, "cpu"),
    ("auto", {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "cpu", 0, "cpu"),
    ("auto", {"SLURM_GPUS_ON_NODE": "0"}, "cpu", 0, "cpu"),
    # a usable GPU: auto takes it, asked for or not
    ("auto", {}, "cuda", 1, "cuda"),
    ("auto", {"CUDA_VISIBLE_DEVICES": "0"}, "cuda", 1, "cuda"),
    ("cuda:1", {}, "cuda", 2, "cuda:1"),
    # a GPU asked for (by the environment or by name) but unusable: refused, naming why and what to do
    ("auto", {"CUDA_VISIBLE_DEVICES": "0"}, "cpu", 0, CPU_BUILD),
    ("auto", {"CUDA_VISIBLE_DEVICES": "GPU-5f3c0d2e"}, "cpu", 0, CPU_BUILD),
    ("auto", {"SLURM_JOB_GPUS": "0"}, "cpu", 0, CPU_BUILD),
    ("auto", {"SLURM_STEP_GPUS": "2,3"}, "cpu", 0, CPU_BUILD),
    ("auto", {"SLURM_GPUS_ON_NODE": "1"}, "cpu", 0, CPU_BUILD),
    ("auto", {"CUDA_VISIBLE_DEVICES": "0"}, "cuda", 0, NO_CUDA),
    ("cuda", {}, "cpu", 0, CPU_BUILD),
    ("cuda", {}, "cuda", 0, NO_CUDA),
    ("cuda:0", {"ENF_ALLOW_CPU": "1"}, "cpu", 0, CPU_BUILD),  # the escape hatch never turns cuda into cpu
    ("cuda:2", {}, "cuda", 1, "sees 1 GPU"),
    ("gpu", {}, "cuda", 1, "not a device name"),
    # the CPU on purpose: an explicit cpu, or ENF_ALLOW_CPU=1 for auto
    ("cpu", {"CUDA_VISIBLE_DEVICES": "0"}, "cpu", 0, "cpu"),
    ("cpu", {"SLURM_JOB_GPUS": "0"}, "cuda", 1, "cpu"),
    ("auto", {"CUDA_VISIBLE_DEVICES": "0", "ENF_ALLOW_CPU": "1"}, "cpu", 0, "cpu"),
    ("auto", {"SLURM_JOB_GPUS": "0", "ENF_ALLOW_CPU": "yes"}, "cuda", 0, "cpu"),
    ("auto", {"SLURM_JOB_GPUS": "0", "ENF_ALLOW_CPU": "0"}, "cuda", 0, NO_CUDA),
])
def test_pick_device(torch_kind, monkeypatch: pytest.MonkeyPatch, name: str, env: dict[str, str], build: str,
                     gpus: int, expected: str) -> None:
    torch_kind(build, gpus)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    if expected in ("cpu", "cuda", "cuda:1"):
        assert pick_device(name, "train.device") == torch.device(expected)
    else:
        with pytest.raises(EnfError, match=expected) as err:
            pick_device(name, "train.device")
        assert "\n" not in str(err.value)
        if name != "auto":
            assert "train.device" in str(err.value)  # names the setting that asked for the GPU
        else:
            assert f"{next(iter(env))}=" in str(err.value)  # names the variable that gave the GPU
            assert "ENF_ALLOW_CPU=1" in str(err.value) and "--device cpu" in str(err.value)  # the way out


def test_the_reason_says_why(torch_kind) -> None:
    """The reason (logged by train, printed by evaluate and sample) says why the CPU was chosen."""
    torch_kind("cpu")
    assert choose_device("auto", env={})[1] == "auto: no GPU requested or visible"
    assert "ENF_ALLOW_CPU=1" in choose_device("auto", env={"SLURM_JOB_GPUS": "0", "ENF_ALLOW_CPU": "1"})[1]
    assert "stays unused" in choose_device("cpu", env={"CUDA_VISIBLE_DEVICES": "0"})[1]


def test_gpu_request_reads_only_the_given_environment() -> None:
    assert gpu_request({}) is None
    assert gpu_request({"CUDA_VISIBLE_DEVICES": " 1,2 "}) == "CUDA_VISIBLE_DEVICES=1,2"
    assert gpu_request({"CUDA_VISIBLE_DEVICES": "-1,0"}) is None  # CUDA stops at the first invalid entry
    assert gpu_request({"SLURM_GPUS_ON_NODE": "2"}) == "SLURM_GPUS_ON_NODE=2"


FAST = ["--n-train", "32", "--set", "model.hidden_nf=8", "--set", "model.n_layers=1", "--set", "train.batch_size=16",
        "--no-progress"]


def test_cli_refuses_a_gpu_it_cannot_use(torch_kind, monkeypatch: pytest.MonkeyPatch, dw4_dir: Path,
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """enf train and enf evaluate given a GPU on a CPU-only torch: exit status 2, one line, nothing written."""
    torch_kind("cpu")
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "dw4", "--model", "enf", "--data", str(dw4_dir), "--out", str(run),
                 "--epochs", "1", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("enf train: error: a GPU was requested (SLURM_JOB_GPUS=0)")
    assert CPU_BUILD in err and not run.exists()
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"never read: the device is chosen first")
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(dw4_dir / "test.npz"),
                 "--out", str(tmp_path / "eval.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("enf evaluate: error: a GPU was requested")
    assert CPU_BUILD in err
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU-only torch (a CUDA one may really run)")
def test_enf_train_with_cuda_visible_devices_exits_2(dw4_dir: Path, tmp_path: Path) -> None:
    """The real command in a fresh process, as a SLURM job given a GPU would run it with a CPU-only torch."""
    env = {k: v for k, v in os.environ.items() if k not in GPU_VARS}
    env.update(CUDA_VISIBLE_DEVICES="0", OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "enf", "train", "--dataset", "dw4", "--model", "enf", "--data", str(dw4_dir),
           "--out", str(run), "--epochs", "1", *FAST]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # one line, no traceback
    assert "CUDA_VISIBLE_DEVICES=0" in res.stderr and CPU_BUILD in res.stderr and not run.exists()
    env["ENF_ALLOW_CPU"] = "1"  # the escape hatch: the same job runs on the CPU and says so
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "device cpu (auto: a GPU was requested (CUDA_VISIBLE_DEVICES=0) but is unusable" in res.stderr
